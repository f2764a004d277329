//! One prompt's run in a pane, as a state type: [`TurnRun`] holds what the run knows, each
//! thing that can wake it ([`Wake`]) has one handler, and [`TurnRun::finish`] turns the way the
//! wait ended ([`End`]) into the run's result.
//!
//! The event sources (the control client, the pane's death, the memory ticker, the transcript
//! follower, the cancel token) live apart from the state, in [`Sources`], so the wait can borrow
//! them while a handler changes the state.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use kokino_cli::tui::{StartupScreen, TranscriptContext, TranscriptParser};
use kokino_cli::{ParsedOutcome, ProcessExit, StreamEvent};
use kokino_core::OutcomeClass;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, Interval};
use tokio_util::sync::CancellationToken;

use super::control::{self, ControlClient, ControlEvent};
use super::pane::{last_lines, PaneInfo};
use super::transcript::Follower;
use super::{process, CompletionSignal, TmuxExecutor, TmuxRequest, TmuxRun, TmuxTimings};
use crate::headless::{ExecEvent, Limits, RunResult, StopReason};
use crate::procfs;

/// How many first-run screens one start may answer before the run gives up on them.
const MAX_FIRST_RUN_SCREENS: usize = 5;

/// The longest a resumed session's TUI is given to draw its restored conversation.
const HISTORY_WAIT: Duration = Duration::from_secs(10);

/// How far above the paste's line the screen is read for the echo of the prompt.
const ECHO_MARGIN_LINES: i64 = 12;

/// How the wait for the turn ended.
pub(super) enum End {
    /// The turn is over: the transcript said so, or the prompt came back on the screen.
    Answer {
        class: OutcomeClass,
        answer: String,
        error: Option<String>,
        signal: CompletionSignal,
    },
    /// The CLI exited (or the session vanished), with its `(code, signal)` when known.
    Died(Option<(Option<i32>, Option<i32>)>),
    /// The executor stopped the run (timeout, inactivity, memory, cancel).
    Stop(StopReason),
    /// The pane cannot be used: a screen the CLI cannot get past, an unknown screen, or tmux
    /// failing mid-run.
    Unusable {
        class: OutcomeClass,
        message: String,
    },
}

impl End {
    /// tmux itself failed, or the screen never became usable: a CLI error.
    fn unusable(message: String) -> End {
        End::Unusable {
            class: OutcomeClass::CliError,
            message,
        }
    }
}

/// What a handler says: carry on waiting, or the wait is over.
type Step = Result<(), End>;

/// Where the run is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the prompt, answering first-run screens.
    Starting,
    /// The paste was sent; waiting for its echo before pressing Enter.
    Pasted,
    /// Enter was sent; waiting for the CLI to react.
    Submitted { retried: bool },
    /// The CLI is working on the prompt.
    Working,
}

/// Something that woke the waiting run.
enum Wake {
    Cancelled,
    Timeout,
    Inactive,
    Died,
    MemorySample,
    Control(Option<ControlEvent>),
    TranscriptChanged,
    /// No attach notification came in time: behave as if it had.
    AttachOverdue,
    /// Time to read the screen.
    CheckDue,
    /// The current phase's deadline passed.
    PhaseDue,
}

/// The CLI's session record, followed as the completion signal.
pub(super) struct Transcript {
    follower: Follower,
    parser: Box<dyn TranscriptParser>,
}

impl Transcript {
    /// The session record of the request's CLI, when its profile has one and it can be
    /// followed (it needs a `HOME` in the child environment).
    pub(super) fn open(req: &TmuxRequest, max_line: usize) -> Option<Transcript> {
        let home = req.env.get("HOME").filter(|h| !h.is_empty())?;
        let cwd = std::fs::canonicalize(&req.cwd).unwrap_or_else(|_| req.cwd.clone());
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        let ctx = TranscriptContext::new(Path::new(home), &cwd, req.session_id.as_deref())
            .with_files(SystemTime::now(), &read);
        let source = req.tui.transcript(&ctx)?;
        let follower = if source.dirs.is_empty() {
            Follower::new(source.path.clone(), max_line)
        } else {
            Follower::in_dirs(source.dirs.clone(), max_line)
        };
        match follower {
            Ok(follower) => Some(Transcript {
                follower,
                parser: source.parser,
            }),
            Err(e) => {
                tracing::warn!(path = %source.path.display(), error = %e,
                    "cannot follow the CLI's session record; falling back to the screen");
                None
            }
        }
    }
}

/// What a run waits on.
pub(super) struct Sources {
    pub control: ControlClient,
    pub death: Pin<Box<dyn Future<Output = ()> + Send>>,
    pub mem_tick: Interval,
    pub transcript: Option<Transcript>,
    pub cancel: CancellationToken,
}

impl Sources {
    /// Resolves when the transcript may have grown; never without a transcript. It borrows
    /// only the follower, so the wait does not need the parser to be `Sync`.
    async fn transcript_changed(follower: Option<&Follower>) {
        match follower {
            Some(f) => f.changed().await,
            None => std::future::pending().await,
        }
    }

    fn malformed_lines(&self) -> u64 {
        self.transcript
            .as_ref()
            .map_or(0, |t| t.parser.malformed_lines())
    }

    /// Whether the session record has shown the pasted prompt: from then on it, not the
    /// screen, ends the turn.
    fn transcript_has_prompt(&self) -> bool {
        self.transcript
            .as_ref()
            .is_some_and(|t| t.parser.prompt_seen())
    }

    /// The CLI's session id as its record names it (a new Codex or Gemini session's).
    fn recorded_session_id(&self) -> Option<String> {
        self.transcript.as_ref().and_then(|t| t.parser.session_id())
    }
}

/// The state of one prompt's run in one pane.
pub(super) struct TurnRun<'a> {
    exec: &'a TmuxExecutor,
    req: &'a TmuxRequest,
    limits: &'a Limits,
    events: &'a mpsc::UnboundedSender<ExecEvent>,
    session: String,
    pane: PaneInfo,
    started: Instant,
    deadline: Instant,
    startup_deadline: Instant,
    attach_deadline: Instant,
    /// The prompt with `\r\n` made `\n`.
    prompt: String,
    timings: TmuxTimings,
    peak_rss: u64,
    last_activity: Instant,
    /// The end of the pane's recent output, to see whether it ended with the prompt.
    tail: Vec<u8>,
    phase: Phase,
    phase_deadline: Option<Instant>,
    /// When to read the screen next. The first check waits for the control client to be
    /// attached, so that no output can fall between the check and the notifications.
    check_at: Option<Instant>,
    attached: bool,
    /// The absolute line where the paste's echo starts.
    start_line: i64,
    /// How long a resumed session's TUI may take to draw its restored conversation before the
    /// prompt is typed anyway (see `Tui::resumed_history_shown`).
    history_deadline: Instant,
}

/// The parts of the result that depend on how the run ended.
struct Ending {
    outcome: OutcomeClass,
    parsed: ParsedOutcome,
    exit: ProcessExit,
    stop: Option<StopReason>,
    stderr_tail: String,
}

impl Ending {
    fn new(outcome: OutcomeClass, parsed: ParsedOutcome) -> Ending {
        Ending {
            outcome,
            parsed,
            exit: ProcessExit::default(),
            stop: None,
            stderr_tail: String::new(),
        }
    }
}

/// The shared inputs of a run, grouped so that [`TurnRun::new`] stays short.
pub(super) struct RunContext<'a> {
    pub exec: &'a TmuxExecutor,
    pub req: &'a TmuxRequest,
    pub limits: &'a Limits,
    pub events: &'a mpsc::UnboundedSender<ExecEvent>,
}

impl<'a> TurnRun<'a> {
    pub(super) fn new(
        ctx: RunContext<'a>,
        session: String,
        pane: PaneInfo,
        started: Instant,
        timings: TmuxTimings,
    ) -> Self {
        let prompt = ctx.req.prompt.replace("\r\n", "\n");
        let now = Instant::now();
        TurnRun {
            prompt,
            deadline: started + ctx.limits.timeout,
            startup_deadline: started + ctx.exec.config.startup_timeout,
            history_deadline: started + HISTORY_WAIT,
            attach_deadline: now + Duration::from_secs(2),
            exec: ctx.exec,
            req: ctx.req,
            limits: ctx.limits,
            events: ctx.events,
            session,
            pane,
            started,
            timings,
            peak_rss: 0,
            last_activity: now,
            tail: Vec::new(),
            phase: Phase::Starting,
            phase_deadline: None,
            check_at: None,
            attached: false,
            start_line: 0,
        }
    }

    /// Waits for the end of the turn, handling every event on the way.
    pub(super) async fn wait(&mut self, src: &mut Sources) -> End {
        loop {
            let wake = self.next_wake(src).await;
            if let Err(end) = self.handle(wake, src).await {
                return end;
            }
        }
    }

    /// The next thing that needs the run's attention. Earlier branches win ties, so a cancel or
    /// a timeout is never starved by a chatty pane.
    async fn next_wake(&self, src: &mut Sources) -> Wake {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let check_at = self.check_at.unwrap_or(far);
        let phase_deadline = self.phase_deadline.unwrap_or(far);
        let inactive_at = self.last_activity + self.limits.inactivity;
        tokio::select! {
            biased;
            _ = src.cancel.cancelled() => Wake::Cancelled,
            _ = sleep_until(self.deadline) => Wake::Timeout,
            _ = sleep_until(inactive_at) => Wake::Inactive,
            _ = &mut src.death => Wake::Died,
            _ = src.mem_tick.tick() => Wake::MemorySample,
            ev = src.control.events.recv() => Wake::Control(ev),
            _ = Sources::transcript_changed(src.transcript.as_ref().map(|t| &t.follower)) => Wake::TranscriptChanged,
            _ = sleep_until(self.attach_deadline), if !self.attached => Wake::AttachOverdue,
            _ = sleep_until(check_at), if self.check_at.is_some() => Wake::CheckDue,
            _ = sleep_until(phase_deadline), if self.phase_deadline.is_some() => Wake::PhaseDue,
        }
    }

    async fn handle(&mut self, wake: Wake, src: &mut Sources) -> Step {
        match wake {
            Wake::Cancelled => Err(End::Stop(StopReason::Cancelled)),
            Wake::Timeout => Err(End::Stop(StopReason::Timeout)),
            Wake::Inactive => Err(End::Stop(StopReason::Inactivity)),
            Wake::Died => Err(End::Died(process::zombie_exit(self.pane.pid))),
            Wake::MemorySample => self.on_memory_sample(),
            Wake::Control(Some(ControlEvent::Attached)) | Wake::AttachOverdue => {
                self.on_attached();
                Ok(())
            }
            Wake::Control(Some(ControlEvent::Output { tail })) => self.on_output(&tail).await,
            Wake::Control(Some(ControlEvent::Exit) | None) => Err(End::Died(None)),
            Wake::TranscriptChanged => self.on_transcript(src),
            Wake::CheckDue => {
                self.check_at = None;
                match self.phase {
                    Phase::Starting => self.on_startup_check().await,
                    // The screen is the fallback while the session record has not shown the
                    // prompt: a CLI (or a version of it) that does not write the record there.
                    Phase::Working if !src.transcript_has_prompt() => self.on_working_check().await,
                    _ => Ok(()),
                }
            }
            Wake::PhaseDue => self.on_phase_deadline().await,
        }
    }

    fn on_memory_sample(&mut self) -> Step {
        let rss = procfs::group_rss_bytes(self.pane.pid);
        self.peak_rss = self.peak_rss.max(rss);
        match self.limits.max_memory_bytes {
            Some(max) if rss > max => Err(End::Stop(StopReason::MemoryLimit { rss_bytes: rss })),
            _ => Ok(()),
        }
    }

    /// Notifications flow from here on, so the screen can be read without missing a change.
    fn on_attached(&mut self) {
        if !self.attached {
            self.attached = true;
            self.check_at = Some(Instant::now());
        }
    }

    /// The pane printed something: it moves the submit along, and schedules a screen check for
    /// when the output has settled.
    async fn on_output(&mut self, tail: &[u8]) -> Step {
        let now = Instant::now();
        self.last_activity = now;
        self.tail.extend_from_slice(tail);
        if self.tail.len() > control::TAIL_BYTES {
            self.tail.drain(..self.tail.len() - control::TAIL_BYTES);
        }
        match self.phase {
            // The CLI has the paste; now submit it.
            Phase::Pasted => self.submit(false).await?,
            Phase::Submitted { .. } => {
                self.phase = Phase::Working;
                self.phase_deadline = None;
                self.check_at = Some(now + self.settle());
            }
            Phase::Starting | Phase::Working => {
                if self.attached {
                    self.check_at = Some(now + self.settle());
                }
            }
        }
        Ok(())
    }

    /// New lines in the session record: they stream out as events, and the record's end of
    /// turn ends the run.
    fn on_transcript(&mut self, src: &mut Sources) -> Step {
        self.last_activity = Instant::now();
        let Some(t) = src.transcript.as_mut() else {
            return Ok(());
        };
        let mut parsed = Vec::new();
        for line in t.follower.read_lines() {
            t.parser.feed_line(&line, &mut parsed);
        }
        for ev in parsed {
            // A session id the record names is reported with the answer only: a Gemini session
            // cut off before its first answer cannot be resumed, so it must not be stored.
            if matches!(ev, StreamEvent::SessionId(_)) {
                continue;
            }
            let _ = self.events.send(ExecEvent::Stream(ev));
        }
        if t.parser.prompt_seen() && matches!(self.phase, Phase::Submitted { .. }) {
            self.phase = Phase::Working;
            self.phase_deadline = None;
        }
        match t.parser.turn_end() {
            Some(end) => {
                if let Some(sid) = t
                    .parser
                    .session_id()
                    .filter(|_| end.class == OutcomeClass::Success)
                {
                    let _ = self
                        .events
                        .send(ExecEvent::Stream(StreamEvent::SessionId(sid)));
                }
                Err(End::Answer {
                    class: end.class,
                    answer: end.answer,
                    error: end.error,
                    signal: CompletionSignal::Transcript,
                })
            }
            None => Ok(()),
        }
    }

    /// While starting: paste at the prompt, answer a first-run screen, or give up on a screen
    /// that never becomes one of those.
    async fn on_startup_check(&mut self) -> Step {
        let text = self.capture(None).await?;
        match self.req.tui.read_startup_screen(&text) {
            // A TUI just started on a resumed session that has not yet drawn its restored
            // conversation: what is typed now may be lost when it does. (A TUI that was already
            // running has drawn it long ago, and a long answer may have scrolled it away.)
            // Bounded: past the history wait, type anyway.
            StartupScreen::Ready
                if self.timings.session_created
                    && self.req.session_id.is_some()
                    && !self.req.tui.resumed_history_shown(&text)
                    && Instant::now() < self.history_deadline =>
            {
                self.check_at = Some(Instant::now() + Duration::from_millis(100));
            }
            StartupScreen::Ready => {
                self.timings.ready_after = Some(self.started.elapsed());
                self.start_line = self
                    .exec
                    .paste(&self.pane.id, &self.prompt)
                    .await
                    .map_err(End::unusable)?;
                self.phase = Phase::Pasted;
                self.phase_deadline = Some(Instant::now() + self.exec.config.paste_echo_timeout);
            }
            StartupScreen::FirstRun(s) => {
                if self.timings.first_run_screens.len() >= MAX_FIRST_RUN_SCREENS {
                    return Err(End::unusable(format!(
                        "the first-run screen \"{}\" did not go away after it was answered; it shows: {}",
                        s.name,
                        last_lines(&text, 5)
                    )));
                }
                tracing::info!(session = %self.session, screen = s.name, keys = ?s.keys, "answering a first-run screen");
                self.timings.first_run_screens.push(s.name);
                let keys: Vec<&str> = s.keys.iter().map(String::as_str).collect();
                self.send_keys(&keys).await?;
                self.check_at = Some(Instant::now() + self.exec.config.quiescence);
            }
            StartupScreen::Blocked { class, reason } => {
                return Err(End::Unusable {
                    class,
                    message: format!(
                        "the {} TUI cannot start: {reason}; it shows: {}",
                        self.req.tui.cli().as_str(),
                        last_lines(&text, 5)
                    ),
                });
            }
            _ if Instant::now() >= self.startup_deadline => {
                return Err(End::unusable(format!(
                    "the pane never showed the {} prompt within {} ms; it shows: {}",
                    self.req.tui.cli().as_str(),
                    self.exec.config.startup_timeout.as_millis(),
                    last_lines(&text, 5)
                )));
            }
            _ => {
                // Output reschedules the check; this only guards against a screen that changed
                // while no notification could reach us.
                let next = Instant::now() + Duration::from_secs(1);
                self.check_at = Some(next.min(self.startup_deadline));
            }
        }
        Ok(())
    }

    /// While working, without a session record: the answer is on the screen once the prompt is
    /// back below the echo.
    async fn on_working_check(&mut self) -> Step {
        // TUIs that draw their input box at the bottom (Gemini, Codex) move the echo of the
        // prompt above the line the cursor was on when it was pasted; the profile finds the echo
        // in a capture that starts a little higher.
        let from = self.start_line - ECHO_MARGIN_LINES;
        let text = self.capture(Some(from.max(0))).await?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        match self.req.tui.extract_answer(&lines, &self.prompt) {
            Some(answer) => Err(End::Answer {
                class: OutcomeClass::Success,
                answer,
                error: None,
                signal: CompletionSignal::PromptAfterQuiet,
            }),
            None if !self.timings.submit_retried
                && self.req.tui.input_holds(&lines, &self.prompt) =>
            {
                // The pane went quiet with the prompt still in its input line: the Enter was
                // lost (the TUI's output was only its redraw of the paste). Press it again, once.
                tracing::warn!(session = %self.session, "the prompt is still in the input line; pressing Enter again");
                self.submit(true).await
            }
            None => Ok(()),
        }
    }

    /// The paste was not echoed, or Enter got no reaction, in time.
    async fn on_phase_deadline(&mut self) -> Step {
        self.phase_deadline = None;
        match self.phase {
            // No echo (a CLI that shows pastes lazily): submit anyway.
            Phase::Pasted => self.submit(false).await?,
            Phase::Submitted { retried: false } => {
                tracing::warn!(session = %self.session, "no reaction to Enter; pressing it again");
                self.submit(true).await?;
            }
            Phase::Submitted { retried: true } => {
                // Perhaps a silent CLI: keep waiting for the completion signal, which the
                // timeouts bound.
                tracing::warn!(session = %self.session, "no visible reaction to the submit");
                self.phase = Phase::Working;
                self.check_at = Some(Instant::now());
            }
            Phase::Starting | Phase::Working => {}
        }
        Ok(())
    }

    /// Presses Enter (again, when `retry`) and waits for the CLI's reaction.
    async fn submit(&mut self, retry: bool) -> Step {
        self.send_keys(&["Enter"]).await?;
        if retry {
            self.timings.submit_retried = true;
        } else {
            self.timings.submitted_after = Some(self.started.elapsed());
        }
        self.phase = Phase::Submitted { retried: retry };
        self.phase_deadline = Some(Instant::now() + self.exec.config.submit_ack_timeout);
        Ok(())
    }

    /// How long to wait for quiet after output: short when the output ended with the prompt.
    fn settle(&self) -> Duration {
        let suffix = self.req.tui.prompt_output_suffix();
        if self.tail.ends_with(suffix) || self.tail.ends_with(suffix.trim_ascii_end()) {
            self.exec.config.prompt_settle
        } else {
            self.exec.config.quiescence
        }
    }

    async fn capture(&self, from: Option<i64>) -> Result<String, End> {
        self.exec
            .capture(&self.pane.id, from)
            .await
            .map_err(End::unusable)
    }

    async fn send_keys(&self, keys: &[&str]) -> Step {
        self.exec
            .send_keys(&self.pane.id, keys)
            .await
            .map_err(End::unusable)
    }

    /// The run's result, once the pane has been dealt with as the way it ended requires.
    pub(super) async fn finish(mut self, end: End, mut src: Sources) -> TmuxRun {
        let ending = match end {
            End::Answer {
                class,
                answer,
                error,
                signal,
            } => self.finish_answer(class, answer, error, signal, &src),
            End::Died(known) if src.recorded_session_id().is_some() => {
                let sid = src.recorded_session_id();
                let mut e = self.finish_died(known, src.malformed_lines()).await;
                e.parsed.session_id = e.parsed.session_id.or(sid);
                e
            }
            End::Died(known) => self.finish_died(known, src.malformed_lines()).await,
            End::Stop(reason) => self.finish_stop(reason, &mut src).await,
            End::Unusable { class, message } => self.finish_unusable(class, message).await,
        };
        // The control client detaches on its own turn, one structural change at a time.
        let Sources { control, .. } = src;
        {
            let _one = self.exec.structure.lock().await;
            control.close(Duration::from_secs(1)).await;
        }
        TmuxRun {
            result: RunResult {
                outcome: ending.outcome,
                parsed: ending.parsed,
                exit: ending.exit,
                stop: ending.stop,
                stderr_tail: ending.stderr_tail,
                duration: self.started.elapsed(),
                peak_rss_bytes: self.peak_rss,
                pid: Some(self.pane.pid),
                spawn_error: None,
            },
            timings: self.timings,
        }
    }

    fn finish_answer(
        &mut self,
        class: OutcomeClass,
        answer: String,
        error: Option<String>,
        signal: CompletionSignal,
        src: &Sources,
    ) -> Ending {
        self.timings.completed_after = Some(self.started.elapsed());
        self.timings.completed_at = Some(SystemTime::now());
        self.timings.signal = Some(signal);
        if signal == CompletionSignal::PromptAfterQuiet {
            // The screen gave no events on the way; the answer is the one stream event.
            let _ = self
                .events
                .send(ExecEvent::Stream(StreamEvent::AssistantText {
                    text: answer.clone(),
                    partial: false,
                }));
            let _ = self.events.send(ExecEvent::Stream(StreamEvent::Final));
        }
        Ending::new(
            class,
            ParsedOutcome {
                class: Some(class),
                answer: Some(answer),
                session_id: src
                    .recorded_session_id()
                    .or_else(|| self.req.session_id.clone()),
                error_message: error,
                malformed_lines: src.malformed_lines(),
                ..ParsedOutcome::default()
            },
        )
    }

    /// The CLI exited: its status and last words, read by the profile for the outcome class.
    async fn finish_died(
        &mut self,
        known: Option<(Option<i32>, Option<i32>)>,
        malformed_lines: u64,
    ) -> Ending {
        let (status, text) = self
            .exec
            .post_mortem(&self.session, &self.pane, known.is_some())
            .await;
        let mut exit = ProcessExit::default();
        match known {
            Some((code, signal)) => {
                exit.code = code;
                exit.signal = signal;
            }
            None => exit.code = status,
        }
        let class = self
            .req
            .tui
            .classify_exit_screen(&text)
            .unwrap_or(OutcomeClass::CliError);
        let status_text = exit
            .code
            .map(|s| format!(" with status {s}"))
            .unwrap_or_default();
        let message = format!(
            "the CLI exited inside tmux{status_text}: {}",
            last_lines(&text, 3)
        );
        self.exec
            .destroy(&self.session, Some(&self.pane), self.limits.kill_grace)
            .await;
        let mut ending = Ending::new(
            class,
            ParsedOutcome {
                class: Some(class),
                session_id: self.req.session_id.clone(),
                error_message: Some(message),
                malformed_lines,
                ..ParsedOutcome::default()
            },
        );
        ending.exit = exit;
        ending.stderr_tail = last_lines(&text, 40);
        ending
    }

    /// The executor stops the run: `C-c` first, then the pane's group and the session.
    async fn finish_stop(&mut self, reason: StopReason, src: &mut Sources) -> Ending {
        // Let the CLI see an ordinary interrupt first: Claude Code then records it in the
        // transcript, which keeps the resumed session coherent.
        let _ = self.exec.send_keys(&self.pane.id, &["C-c"]).await;
        let grace_end = Instant::now() + self.exec.config.interrupt_grace;
        loop {
            tokio::select! {
                _ = &mut src.death => break,
                _ = sleep_until(grace_end) => break,
                ev = src.control.events.recv() => {
                    if matches!(ev, None | Some(ControlEvent::Exit)) { break; }
                }
            }
        }
        let stderr_tail = self.screen_tail().await;
        self.exec
            .destroy(&self.session, Some(&self.pane), self.limits.kill_grace)
            .await;
        let outcome = match reason {
            StopReason::Cancelled => OutcomeClass::Cancelled,
            StopReason::MemoryLimit { .. } => OutcomeClass::ResourceLimit,
            _ => OutcomeClass::Timeout,
        };
        let mut ending = Ending::new(
            outcome,
            ParsedOutcome {
                session_id: self.req.session_id.clone(),
                malformed_lines: src.malformed_lines(),
                ..ParsedOutcome::default()
            },
        );
        ending.stop = Some(reason);
        ending.stderr_tail = stderr_tail;
        ending
    }

    async fn finish_unusable(&mut self, class: OutcomeClass, message: String) -> Ending {
        let stderr_tail = self.screen_tail().await;
        self.exec
            .destroy(&self.session, Some(&self.pane), self.limits.kill_grace)
            .await;
        let mut ending = Ending::new(
            class,
            ParsedOutcome {
                class: Some(class),
                error_message: Some(message),
                ..ParsedOutcome::default()
            },
        );
        ending.stderr_tail = stderr_tail;
        ending
    }

    /// The last 40 lines of the screen, for the post-mortem (empty if tmux cannot say).
    async fn screen_tail(&self) -> String {
        self.exec
            .capture(&self.pane.id, None)
            .await
            .map(|text| last_lines(&text, 40))
            .unwrap_or_default()
    }
}

//! Drives one agent through a running broker: register, execute, stream a second prompt, read
//! the conversation, and show a typed error.
//!
//! ```text
//! cargo run -p kokino-client --example drive_agent -- http://127.0.0.1:8787 /path/to/claude [token]
//! ```

use kokino_client::{Client, ErrorCode, ExecuteRequest, RegisterRequest, StreamEvent};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("usage: drive_agent URL BINARY [TOKEN]")?;
    let binary = args.next().ok_or("usage: drive_agent URL BINARY [TOKEN]")?;
    let mut client = Client::new(&url)?.with_request_id("drive-agent-example");
    if let Some(token) = args.next() {
        client = client.with_token(token);
    }

    let health = client.health().await?;
    println!("broker {} is {}", health.version, health.status);

    let agent = client
        .register(&RegisterRequest {
            agent_id: "example".into(),
            cli_type: "claude-code".into(),
            binary: Some(binary),
            cwd: Some(std::env::temp_dir().display().to_string()),
            ..Default::default()
        })
        .await?;
    println!(
        "registered {} ({})",
        agent.spec.agent_id, agent.spec.cli_type
    );

    let answer = client
        .execute(
            "example",
            &ExecuteRequest {
                prompt: "Say hello".into(),
                ..Default::default()
            },
        )
        .await?;
    println!("answer: {}", answer.content);

    let mut stream = client
        .execute_stream(
            "example",
            &ExecuteRequest {
                prompt: "And again".into(),
                ..Default::default()
            },
        )
        .await?;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Result(r) => println!("streamed answer: {}", r.content),
            StreamEvent::Error(e) => println!("streamed error: {} ({})", e.error, e.code),
            other => println!("event: {}", other.name()),
        }
    }

    let conversation = client.conversation("example").await?;
    println!(
        "conversation {} has {} turns",
        conversation.conversation.conversation_id,
        conversation.turns.len()
    );

    match client.agent("nobody").await {
        Err(e) if e.code() == Some(ErrorCode::AgentNotFound) => {
            println!("typed error: {e}")
        }
        other => return Err(format!("expected AGENT_NOT_FOUND, got {other:?}").into()),
    }
    Ok(())
}

//! The messages between the broker and its spawner: one `SOCK_SEQPACKET` datagram each, so a
//! message never arrives in pieces and never runs into the next one. A message is a tag byte
//! followed by fields, each a little-endian `u32` length and that many bytes.

/// Broker → spawner: start a CLI. Fields: id, program, working directory (empty for the
/// spawner's own), the number of arguments, the arguments, then the environment as `KEY=value`.
/// The CLI's stdin, stdout and stderr come with it as three descriptors (`SCM_RIGHTS`).
pub(crate) const SPAWN: u8 = b'S';
/// Broker → spawner: SIGKILL what is left of a run now (its group and its daemons), without
/// the grace. Field: id.
pub(crate) const KILL: u8 = b'K';
/// Spawner → broker: the CLI runs. Fields: id, pid (which is also its process group), start
/// time.
pub(crate) const STARTED: u8 = b'P';
/// Spawner → broker: the CLI could not be started. Fields: id, `errno`, a message.
pub(crate) const FAILED: u8 = b'F';
/// Spawner → broker: the CLI exited and nothing it started is left. Fields: id, the raw wait
/// status.
pub(crate) const EXITED: u8 = b'X';

/// The largest message either side reads. A spawn request above it (an environment of hundreds
/// of kilobytes) is refused by the socket, and the broker starts that CLI under a supervisor of
/// its own instead.
pub(crate) const MAX_MESSAGE: usize = 192 * 1024;

/// One message: `tag`, then `fields`.
pub(crate) fn encode(tag: u8, fields: &[&[u8]]) -> Vec<u8> {
    let len = 1 + fields.iter().map(|f| 4 + f.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(tag);
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// The tag and fields of a message; `None` when it is not one.
pub(crate) fn decode(msg: &[u8]) -> Option<(u8, Vec<&[u8]>)> {
    let (&tag, mut rest) = msg.split_first()?;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        fields.push(rest.get(4..4 + len)?);
        rest = &rest[4 + len..];
    }
    Some((tag, fields))
}

/// A field as a number.
pub(crate) fn number<T: std::str::FromStr>(field: Option<&&[u8]>) -> Option<T> {
    std::str::from_utf8(field?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let msg = encode(SPAWN, &[b"7", b"", b"prog", "é".as_bytes()]);
        let (tag, fields) = decode(&msg).unwrap();
        assert_eq!(tag, SPAWN);
        assert_eq!(fields, vec![&b"7"[..], b"", b"prog", "é".as_bytes()]);
        assert_eq!(number::<u64>(fields.first()), Some(7));
        assert_eq!(decode(&[EXITED]), Some((EXITED, vec![])));
    }

    #[test]
    fn refuses_what_is_cut_short() {
        assert_eq!(decode(&[]), None);
        let msg = encode(KILL, &[b"12345"]);
        assert_eq!(decode(&msg[..msg.len() - 1]), None);
        assert_eq!(decode(&[KILL, 1, 0]), None);
    }
}

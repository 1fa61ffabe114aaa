use std::io;

use crate::hello::HandshakeField;

/// Everything that can go wrong while encoding, decoding or checking bytes
/// that cross a process boundary.
///
/// An error is about one connection or one input: the caller drops that
/// connection (or answers that peer with an error line) and carries on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame's declared or actual length is above the configured cap.
    /// Raised before anything of that size is allocated.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length that was declared (decode) or produced (encode).
        len: u64,
        /// The cap in force.
        max: usize,
    },
    /// A frame's payload is not a valid encoding of the expected message.
    #[error("cannot decode frame payload: {reason}")]
    Decode {
        /// What the decoder objected to.
        reason: String,
    },
    /// A message could not be encoded (a custom `Serialize` failed).
    #[error("cannot encode message: {reason}")]
    Encode {
        /// What the encoder objected to.
        reason: String,
    },
    /// A line is longer than the line cap. The connection should be closed:
    /// the rest of that line is unread.
    #[error("line longer than the maximum of {max} bytes")]
    LineTooLong {
        /// The cap in force.
        max: usize,
    },
    /// A line is not a valid command or reply of the line protocol.
    #[error("malformed line: {reason}")]
    MalformedLine {
        /// Why it was rejected, in words fit for an `ERR` reply.
        reason: String,
    },
    /// A received `Hello` does not match what this side expects.
    #[error("handshake mismatch on {field}: expected {expected}, got {got}")]
    Handshake {
        /// The field that differs.
        field: HandshakeField,
        /// What this side expected, rendered for humans.
        expected: String,
        /// What the peer sent, rendered for humans.
        got: String,
    },
    /// Peer authentication failed: a wrong or missing proof of the cluster
    /// secret, or a secret that is not usable.
    #[error("authentication failed: {reason}")]
    Auth {
        /// What was wrong, for humans.
        reason: String,
    },
    /// A remote timestamp is further ahead of the local clock than allowed.
    #[error(
        "remote timestamp {remote_ms} ms is {} ms ahead of local time {local_ms} ms (max drift {max_drift_ms} ms)",
        remote_ms.saturating_sub(*local_ms)
    )]
    ClockDrift {
        /// The remote physical time in milliseconds.
        remote_ms: u64,
        /// The local physical time in milliseconds.
        local_ms: u64,
        /// The configured maximum drift.
        max_drift_ms: u64,
    },
    /// The underlying stream failed or timed out. For a read timeout the
    /// blocking readers keep any partial frame, so reading again resumes.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl WireError {
    /// Whether this is a read or write timeout of the underlying stream
    /// (`WouldBlock` or `TimedOut`), after which a blocking reader may resume.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        WireError::MalformedLine {
            reason: reason.into(),
        }
    }
}

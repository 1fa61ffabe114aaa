//! The ends of a node's control pipe, stdin and stdout. When they are
//! pipes (a conductor starts every node so), they run on the runtime's
//! reactor: a line costs a system call. Otherwise (a terminal, a file)
//! they are tokio's stdin and stdout, which read and write on the
//! runtime's blocking threads, one hand-over per line.
//!
//! A pipe on the reactor is non-blocking, and that flag belongs to the
//! pipe, not to this process: it is cleared again when the end is dropped,
//! so a shell that shares the pipe gets it back as it was (a node killed
//! with SIGKILL cannot clear it).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;

/// Where a node reads its commands.
pub(crate) enum Input {
    Pipe(Blocking<pipe::Receiver>),
    Std(tokio::io::Stdin),
}

/// Where a node writes its answers.
pub(crate) enum Output {
    Pipe(Blocking<pipe::Sender>),
    Std(tokio::io::Stdout),
}

/// A pipe end that gives its pipe back blocking when dropped.
pub(crate) struct Blocking<T> {
    end: T,
    fd: OwnedFd,
}

impl<T> Drop for Blocking<T> {
    fn drop(&mut self) {
        if let Ok(flags) = fcntl(&self.fd, FcntlArg::F_GETFL) {
            let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
            let _ = fcntl(&self.fd, FcntlArg::F_SETFL(flags));
        }
    }
}

/// A copy of `fd`, if it is a pipe, made non-blocking for the reactor.
fn piped<T>(fd: impl AsFd, open: fn(File) -> io::Result<T>) -> Option<Blocking<T>> {
    let copy = fd.as_fd().try_clone_to_owned().ok()?;
    let keep = copy.try_clone().ok()?;
    // Refuses (and leaves alone) anything but a pipe or FIFO.
    let end = open(File::from(copy)).ok()?;
    Some(Blocking { end, fd: keep })
}

/// Stdin, on the reactor when it is a pipe.
pub(crate) fn input() -> Input {
    match piped(io::stdin(), pipe::Receiver::from_file) {
        Some(p) => Input::Pipe(p),
        None => Input::Std(tokio::io::stdin()),
    }
}

/// Stdout, on the reactor when it is a pipe.
pub(crate) fn output() -> Output {
    match piped(io::stdout(), pipe::Sender::from_file) {
        Some(p) => Output::Pipe(p),
        None => Output::Std(tokio::io::stdout()),
    }
}

impl AsyncRead for Input {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Input::Pipe(p) => Pin::new(&mut p.end).poll_read(cx, buf),
            Input::Std(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Output::Pipe(p) => Pin::new(&mut p.end).poll_write(cx, buf),
            Output::Std(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Output::Pipe(p) => Pin::new(&mut p.end).poll_flush(cx),
            Output::Std(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Output::Pipe(p) => Pin::new(&mut p.end).poll_shutdown(cx),
            Output::Std(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

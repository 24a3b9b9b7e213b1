//! The TCP stream under the TLS listener's sessions, read ahead while data flows.
//!
//! rustls asks its transport for at most 4 KiB per read (its deframer grows by that much),
//! so a client streaming into the proxy, such as an SSH upload through `jitgate ssh-proxy`,
//! cost one `recvfrom` per 4 KiB: four or more per TLS record. Here a read that fills the
//! caller's buffer, a sign that more is waiting, makes the next one read up to
//! [`READ_AHEAD`] at once into a buffer that later reads are served from. tokio's
//! `BufReader` would do the reading, but it keeps its buffer for the stream's whole life,
//! and most connections are idle keep-alives: 10,000 of them would hold 640 MiB. This
//! buffer is freed as soon as the socket has nothing more, so an idle connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most read from the socket at once: four full TLS records.
pub const READ_AHEAD: usize = 64 * 1024;

pub struct ReadAhead<S> {
    io: S,
    /// Read from the socket and not yet passed on: `buf[start..end]`.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(io: S) -> Self {
        ReadAhead {
            io,
            buf: None,
            start: 0,
            end: 0,
        }
    }

    /// The stream under the buffer; what was read ahead stays in front of it.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.start == this.end {
            let Some(buf) = this.buf.as_mut() else {
                // Nothing read ahead: straight into the caller's buffer, and read ahead
                // next time only if this read filled it.
                let wanted = out.remaining();
                let before = out.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
                if out.filled().len() - before == wanted && wanted < READ_AHEAD {
                    this.buf = Some(vec![0; READ_AHEAD].into_boxed_slice());
                }
                return Poll::Ready(Ok(()));
            };
            let mut ahead = ReadBuf::new(buf);
            match Pin::new(&mut this.io).poll_read(cx, &mut ahead) {
                Poll::Ready(Ok(())) => {
                    this.start = 0;
                    this.end = ahead.filled().len();
                    if this.end == 0 {
                        // End of stream.
                        this.buf = None;
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.buf = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    // The socket is drained: the stream has gone quiet, so the buffer goes.
                    this.buf = None;
                    return Poll::Pending;
                }
            }
        }
        let Some(buf) = this.buf.as_ref() else {
            return Poll::Ready(Ok(()));
        };
        let n = (this.end - this.start).min(out.remaining());
        out.put_slice(&buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads in rustls's 4 KiB steps get every byte in order, across read-ahead refills,
    /// the writer's pauses and the end of the stream; and the buffer is let go once the
    /// socket has nothing more.
    #[tokio::test]
    async fn small_reads_get_every_byte_and_the_buffer_goes_when_quiet() {
        let (a, mut b) = tokio::io::duplex(256 * 1024);
        let mut r = ReadAhead::new(a);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        b.write_all(&data[..200_000]).await.unwrap();
        let mut got = Vec::new();
        let mut step = [0u8; 4096];
        while got.len() < 200_000 {
            let n = r.read(&mut step).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&step[..n]);
        }
        assert!(r.buf.is_some(), "a stream of full reads reads ahead");
        // Drained: the next read waits, and the buffer goes.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut step)).await;
        assert!(waiting.is_err());
        assert!(r.buf.is_none(), "a quiet stream holds no buffer");
        b.write_all(&data[200_000..]).await.unwrap();
        drop(b);
        loop {
            let n = r.read(&mut step).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&step[..n]);
        }
        assert_eq!(got, data);
    }

    /// Writes pass straight through, and a read as large as the read-ahead is not copied twice.
    #[tokio::test]
    async fn writes_pass_through_and_large_reads_bypass() {
        let (a, mut b) = tokio::io::duplex(256 * 1024);
        let mut r = ReadAhead::new(a);
        r.write_all(b"hello").await.unwrap();
        let mut five = [0u8; 5];
        b.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"hello");
        b.write_all(&[1u8; READ_AHEAD]).await.unwrap();
        let mut big = vec![0u8; READ_AHEAD];
        r.read_exact(&mut big).await.unwrap();
        assert!(r.buf.is_none());
        assert!(big.iter().all(|&x| x == 1));
    }
}

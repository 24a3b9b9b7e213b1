//! The pool against a small HTTP/1.1 upstream whose answers and closes each test picks by path.

use std::sync::atomic::AtomicUsize;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// An HTTP/1.1 upstream that counts the connections it accepted. By path: `/keep`
/// answers and keeps the connection (head and body in one write); `/slow-body` too, its
/// body 50 ms after its head; `/close-after` answers as if it kept it, then
/// closes it (an idle timeout that struck at once); `/close-later` closes it 30 ms
/// later, when it sits in the pool; `/bye` answers with
/// `Connection: close`; `/big` answers 4 MiB; `/echo` sends back the request's body.
async fn upstream() -> (Uri, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target: Uri = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
    (target, accepted)
}

async fn serve(mut tcp: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = match path.as_str() {
            "/big" => vec![b'x'; 4 << 20],
            "/echo" => buf[head_end..head_end + length].to_vec(),
            _ => b"hello".to_vec(),
        };
        buf.drain(..head_end + length);
        if let Some(how) = path.strip_prefix("/chunked") {
            if !chunked(&mut tcp, how).await {
                return;
            }
            continue;
        }
        let close = if path == "/bye" { "Connection: close\r\n" } else { "" };
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{close}\r\n", body.len()).into_bytes();
        if path == "/slow-body" {
            if tcp.write_all(&head).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tcp.write_all(&body).await.is_err() {
                return;
            }
            continue;
        }
        // Head and body in one write, as servers answer small requests.
        let mut answer = head;
        answer.extend_from_slice(&body);
        if tcp.write_all(&answer).await.is_err() {
            return;
        }
        if path == "/bye" || path == "/close-after" {
            return;
        }
        if path == "/close-later" {
            tokio::time::sleep(Duration::from_millis(30)).await;
            return;
        }
    }
}

/// A chunked answer, "hello" in two chunks. `how`: empty, the body's end comes in the
/// same write as the last chunk; `-slow`, 50 ms after it; `-trailers`, with a trailer;
/// `-cut`, the connection closes after the first chunk. False: the connection is done.
async fn chunked(tcp: &mut TcpStream, how: &str) -> bool {
    if how == "-cut" {
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n")
            .await;
        return false;
    }
    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n";
    let end = match how {
        "-trailers" => "0\r\nx-checksum: 42\r\n\r\n",
        _ => "0\r\n\r\n",
    };
    if how == "-slow" {
        if tcp.write_all(head.as_bytes()).await.is_err() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        return tcp.write_all(end.as_bytes()).await.is_ok();
    }
    tcp.write_all(format!("{head}{end}").as_bytes()).await.is_ok()
}

fn pool(target: Uri) -> Arc<H1Pool> {
    let tls = crate::front::upstream_tls::builder()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let connector = crate::front::upstream_tls::h1_connector(tls, Duration::from_secs(5), true);
    Arc::new(H1Pool::new(connector, target, 8))
}

fn get(target: &Uri, path: &str) -> Request<Body> {
    Request::get(path)
        .header(hyper::header::HOST, target.authority().unwrap().as_str())
        .body(Body::empty())
        .unwrap()
}

async fn text(pool: &Arc<H1Pool>, req: Request<Body>) -> String {
    let resp = pool.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn requests_one_after_another_share_one_connection() {
    let (target, accepted) = upstream().await;
    let pool = pool(target.clone());
    for _ in 0..5 {
        assert_eq!(text(&pool, get(&target, "/keep")).await, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn requests_at_once_each_get_a_connection_then_share_them() {
    let (target, accepted) = upstream().await;
    let pool = pool(target.clone());
    let both = futures_util::future::join(text(&pool, get(&target, "/keep")), text(&pool, get(&target, "/keep")));
    assert_eq!(both.await, ("hello".to_owned(), "hello".to_owned()));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    for _ in 0..4 {
        text(&pool, get(&target, "/keep")).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "both were pooled");
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_used_again() {
    let (target, accepted) = upstream().await;
    let pool = pool(target.clone());
    assert_eq!(text(&pool, get(&target, "/close-after")).await, "hello");
    // The upstream's FIN arrives; the pooled connection is found closed when taken.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(text(&pool, get(&target, "/keep")).await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_on_a_connection_that_closed_before_taking_it_comes_back() {
    let (target, _) = upstream().await;
    let pool = pool(target.clone());
    assert_eq!(text(&pool, get(&target, "/close-later")).await, "hello");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Taken without the pool's look, as when the close comes just after it: the
    // connection finds the close first, and must give the request back, unsent.
    let idle = pool.idle.lock().unwrap().pop().expect("the connection was pooled");
    let sent = tokio::time::timeout(Duration::from_secs(5), pool.send_on(idle.conn, get(&target, "/keep")))
        .await
        .expect("the request did not wait for ever");
    let mut e = sent.err().expect("a closed connection gives no answer");
    assert!(
        e.take_message().is_some(),
        "the request came back unsent: {}",
        e.error()
    );
    // And through the pool it goes on a new connection.
    assert_eq!(text(&pool, get(&target, "/keep")).await, "hello");
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let (target, accepted) = upstream().await;
    let pool = pool(target.clone());
    assert_eq!(text(&pool, get(&target, "/bye")).await, "hello");
    assert_eq!(text(&pool, get(&target, "/keep")).await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert!(pool.idle.lock().unwrap().len() == 1, "only the kept one is pooled");
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let (target, accepted) = upstream().await;
    let pool = pool(target.clone());
    let resp = pool.request(get(&target, "/big")).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(!first.into_data().unwrap().is_empty());
    drop(body);
    assert!(
        pool.idle.lock().unwrap().is_empty(),
        "a connection mid-answer is not pooled"
    );
    assert_eq!(text(&pool, get(&target, "/keep")).await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_large_answer_and_an_upload_stream_through_whole() {
    let (target, accepted) = upstream().await;
    let pool = pool(target.clone());
    assert_eq!(text(&pool, get(&target, "/big")).await.len(), 4 << 20);
    let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let req = Request::post("/echo")
        .header(hyper::header::HOST, target.authority().unwrap().as_str())
        .header(hyper::header::CONTENT_LENGTH, upload.len())
        .body(Body::from(upload.clone()))
        .unwrap();
    let resp = pool.request(req).await.unwrap();
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(echoed == upload, "the upload came back changed");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// The frames of `path`'s body, each with whether the body said it had ended after it.
async fn frames(pool: &Arc<H1Pool>, target: &Uri, path: &str) -> Vec<(String, bool)> {
    let resp = pool.request(get(target, path)).await.unwrap();
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        let what = match frame.into_data() {
            Ok(data) => String::from_utf8(data.to_vec()).unwrap(),
            Err(frame) => format!("trailers {:?}", frame.into_trailers().unwrap()),
        };
        seen.push((what, hyper::body::Body::is_end_stream(&body)));
    }
    assert!(
        hyper::body::Body::is_end_stream(&body),
        "{path}: ended after its last frame"
    );
    seen
}

#[tokio::test]
async fn a_chunked_body_tells_its_end_with_its_last_chunk_when_the_end_is_in() {
    let (target, accepted) = upstream().await;
    let pool = pool(target.clone());
    let seen = frames(&pool, &target, "/chunked").await;
    let whole: String = seen.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(whole, "hello");
    assert!(seen.last().unwrap().1, "the last chunk came with the end: {seen:?}");
    // When the end comes later, it is a frame of its own; with trailers, they are last.
    let slow = frames(&pool, &target, "/chunked-slow").await;
    assert_eq!(slow.iter().map(|(d, _)| d.as_str()).collect::<String>(), "hello");
    assert!(!slow.last().unwrap().1, "the end was not in yet: {slow:?}");
    let trailed = frames(&pool, &target, "/chunked-trailers").await;
    assert_eq!(trailed.len(), 3, "{trailed:?}");
    assert!(!trailed[1].1, "trailers follow the last chunk: {trailed:?}");
    assert!(trailed[2].0.contains("x-checksum"), "{trailed:?}");
    assert_eq!(text(&pool, get(&target, "/keep")).await, "hello");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "every answer ended whole and was pooled"
    );
}

#[tokio::test]
async fn a_chunked_body_cut_short_fails_and_its_connection_is_not_pooled() {
    let (target, accepted) = upstream().await;
    let pool = pool(target.clone());
    let resp = pool.request(get(&target, "/chunked-cut")).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "hel");
    assert!(!hyper::body::Body::is_end_stream(&body), "the end never came");
    assert!(body.frame().await.unwrap().is_err(), "the cut is an error");
    assert!(body.frame().await.is_none(), "nothing after the error");
    assert!(!hyper::body::Body::is_end_stream(&body), "a failed body did not end");
    drop(body);
    assert!(
        pool.idle.lock().unwrap().is_empty(),
        "the failed connection is not pooled"
    );
    assert_eq!(text(&pool, get(&target, "/keep")).await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A future that counts how often it is polled.
struct Counted<F> {
    inner: Pin<Box<F>>,
    polls: usize,
}

impl<F: Future> Future for Counted<F> {
    type Output = (F::Output, usize);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls += 1;
        let polls = self.polls;
        self.inner.as_mut().poll(cx).map(|out| (out, polls))
    }
}

#[tokio::test]
async fn an_answer_wakes_its_task_for_its_socket_only() {
    let (target, _) = upstream().await;
    let pool = pool(target.clone());
    assert_eq!(text(&pool, get(&target, "/keep")).await, "hello");
    for _ in 0..3 {
        let request = Counted {
            inner: Box::pin(text(&pool, get(&target, "/keep"))),
            polls: 0,
        };
        let began = Instant::now();
        let (answer, polls) = tokio::time::timeout(Duration::from_secs(5), request)
            .await
            .expect("a wake-up was lost");
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "the answer took {:?}",
            began.elapsed()
        );
        assert_eq!(answer, "hello");
        // One poll sends the request, the next, when the socket has the answer (head
        // and body in one write), reads it whole. A wake-up of the task by hyper's
        // channels between it and the connection it drives would be one more each.
        assert!(polls <= 2, "a request on a pooled connection took {polls} polls");
    }
}

#[tokio::test]
async fn a_body_that_comes_after_its_head_is_waited_for_on_its_socket() {
    let (target, accepted) = upstream().await;
    let pool = pool(target.clone());
    for _ in 0..2 {
        // The answer's head is in without its body: the body's first poll finds nothing
        // and must leave the task's waker with the socket. A wake-up lost there would
        // leave the answer to the timeout's own, which polls it again: measured.
        let began = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), text(&pool, get(&target, "/slow-body")))
            .await
            .expect("the body's wake-up was lost");
        assert_eq!(answer, "hello");
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "the body took {:?}",
            began.elapsed()
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection is pooled after each"
    );
}

#[tokio::test]
async fn an_upstream_that_is_down_is_an_error_that_says_so() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target: Uri = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
    drop(listener);
    let pool = pool(target.clone());
    let err = pool.request(get(&target, "/keep")).await.err().unwrap();
    assert!(err.to_string().starts_with("cannot connect: "), "{err}");
}

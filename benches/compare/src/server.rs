//! The benchmark's HTTP server: tokio + axum on 127.0.0.1, in the parent process, so it never
//! shares a process with the contender being measured. `GET /?d=<ms>&n=<bytes>` sleeps `d` ms
//! (an async sleep, no thread blocked) and answers `n` bytes.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

#[derive(Deserialize)]
struct Params {
    d: u64,
    n: usize,
}

async fn page(Query(params): Query<Params>) -> String {
    tokio::time::sleep(Duration::from_millis(params.d)).await;
    "x".repeat(params.n)
}

/// Starts the server on its own runtime thread; returns its address.
pub fn start() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                // A backlog of 4096, not the usual 128: 256 clients connecting at once would
                // overflow the accept queue, and a dropped SYN costs a one-second retransmit.
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket.set_reuseaddr(true).expect("reuseaddr");
                socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
                let listener = socket.listen(4096).expect("listen");
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new().route("/", get(page));
                axum::serve(listener, app).await.expect("serve");
            });
        })
        .expect("server thread");
    rx.recv().expect("server address")
}

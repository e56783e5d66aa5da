//! toxiproxy (built from the Go module proxy by tools/build.sh): a TCP proxy whose traffic a
//! test can stall, to put a real network fault between one client and the apiserver.

use std::{net::SocketAddr, time::Duration};

use pulsecheck_lab::{controlplane::ControlPlane, process::Process};

use super::{eventually, tool};

/// A toxiproxy server and its HTTP API.
pub struct Toxiproxy {
    api: SocketAddr,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Toxiproxy {
    pub async fn start() -> Toxiproxy {
        let program = tool("toxiproxy-server");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let args = ["-host".to_string(), "127.0.0.1".to_string(), "-port".to_string(), port.to_string()];
        let process = Process::spawn("toxiproxy-server", &program, &args, &dir.path().join("toxiproxy.log")).expect("toxiproxy starts");
        let api = SocketAddr::from(([127, 0, 0, 1], port));
        eventually("toxiproxy answers", Duration::from_secs(20), || async move { tokio::net::TcpStream::connect(api).await.ok().map(drop) }).await;
        Toxiproxy { api, _process: process, _dir: dir }
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.api).await.expect("toxiproxy API reachable");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.api,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    /// A proxy to `upstream`; returns where it listens.
    pub async fn proxy(&self, upstream: &str) -> SocketAddr {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let body = format!(r#"{{"name":"apiserver","listen":"{listen}","upstream":"{upstream}","enabled":true}}"#);
        let (code, answer) = self.call("POST", "/proxies", &body).await;
        assert!(code == 201 || code == 200, "creating the proxy: {code} {answer}");
        listen
    }

    /// Every byte in both directions is held back, the connections stay open: a half-open link.
    pub async fn stall(&self) {
        for stream in ["upstream", "downstream"] {
            let body = format!(r#"{{"name":"stall-{stream}","type":"timeout","stream":"{stream}","toxicity":1.0,"attributes":{{"timeout":0}}}}"#);
            let (code, answer) = self.call("POST", "/proxies/apiserver/toxics", &body).await;
            assert!(code == 200 || code == 201, "adding the toxic: {code} {answer}");
        }
    }

    pub async fn heal(&self) {
        for stream in ["upstream", "downstream"] {
            let (code, answer) = self.call("DELETE", &format!("/proxies/apiserver/toxics/stall-{stream}"), "").await;
            assert!(code == 204 || code == 200, "removing the toxic: {code} {answer}");
        }
    }
}

/// A client of `cp` that reaches the apiserver only through a proxy of `toxiproxy`.
pub async fn client_through(toxiproxy: &Toxiproxy, cp: &ControlPlane) -> kube::Client {
    let upstream = cp.server_url().trim_start_matches("https://").to_string();
    let listen = toxiproxy.proxy(&upstream).await;
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    config.cluster_url = format!("https://{listen}").parse().unwrap();
    kube::Client::try_from(config).unwrap()
}

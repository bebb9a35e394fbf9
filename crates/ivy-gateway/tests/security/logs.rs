//! Log flooding: a meter that keeps sending malformed replies (and stops answering polls) writes at most one WARN
//! line a minute, with the number of lines held back, not one per frame or per poll. Measured on the gateway binary's
//! own log (JSON lines on stderr), since the log is the subject.

use crate::report;
use ivy_protocol::dlt645::Frame;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Malformed inputs each meter sends.
const MALFORMED: usize = 40;

#[tokio::test]
async fn malformed_replies_log_at_most_one_warning_a_minute_per_meter() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ivy-gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ndata_dir = {:?}\nlog_format = \"json\"\n[meters]\nhost = \"127.0.0.1\"\nport = 0\n\
             [polling]\ninterval_ms = 200\nfirst_poll_delay_ms = 100\njitter_percent = 0\n\
             [dlt645]\ntimeout_ms = 100\nretries = 0\n[dlms]\nassociation_timeout_ms = 100\nresponse_timeout_ms = 100\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = 0\nws_port = 0\n[http]\nenabled = false\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ivy-gateway"))
        .arg("--config")
        .arg(&config)
        .env("MQTT_USERS", "adm:admpass:admin")
        .env_remove("LOG_LEVEL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _proc = Proc(child);
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let line = BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.starts_with("ivy-gateway listening"));
    let line = line.expect("the gateway prints its addresses");
    let meters: std::net::SocketAddr =
        line.split_whitespace().skip_while(|w| *w != "meters").nth(1).unwrap().parse().unwrap();

    // A DL/T 645 meter whose values never decode (not BCD) and that answers no poll.
    let mut dlt = TcpStream::connect(meters).await.unwrap();
    dlt.write_all(&Frame::read_address_reply("000000005555".parse().unwrap()).encode()).await.unwrap();
    // An EM114070 that sends malformed APDUs (a cut GET-Response, a DataNotification with a broken body) and
    // answers no association.
    let mut dlms = TcpStream::connect(meters).await.unwrap();
    dlms.write_all(&ivy_sim::dlms::heartbeat("IVY000005555")).await.unwrap();
    let broken: [&[u8]; 2] = [&[0xC4, 0x01], &[0x0F, 0x00, 0x00, 0x00, 0x01, 0x00, 0x02, 0x09]];
    for n in 0..MALFORMED {
        let value =
            Frame::read_reply("000000005555".parse().unwrap(), 0x0201_0100.into(), &[0xAA, 0xAA], false).unwrap();
        dlt.write_all(&value.encode()).await.unwrap();
        let apdu = ivy_protocol::wrapper::wrap(0x0001, 0x0001, broken[n % 2]).unwrap();
        dlms.write_all(&apdu).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let lines = log.lock().unwrap().clone();
    // A line is about a meter when it names its id or its connection (some name only the peer).
    let warnings = |meter: &str, socket: &TcpStream| {
        let peer = socket.local_addr().unwrap().to_string();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["level"] == "WARN" && (v.to_string().contains(meter) || v.to_string().contains(&peer)))
            .map(|v| v["fields"]["message"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let dlt_warnings = warnings("000000005555", &dlt);
    let dlms_warnings = warnings("IVY000005555", &dlms);
    println!("DL/T 645 meter: {} inputs, WARN lines {dlt_warnings:?}", MALFORMED);
    println!("DLMS meter: {} inputs, WARN lines {dlms_warnings:?}", MALFORMED);
    // The meters were really heard (their trouble was logged once), and each time only once.
    assert!(!dlt_warnings.is_empty(), "the DL/T 645 meter's bad values were not logged at all: {lines:?}");
    assert!(!dlms_warnings.is_empty(), "the DLMS meter's malformed APDUs were not logged at all: {lines:?}");
    report("malformed replies, WARN lines per meter (DL/T 645)", 1, usize::from(dlt_warnings.len() <= 1));
    report("malformed replies, WARN lines per meter (DLMS)", 1, usize::from(dlms_warnings.len() <= 1));
}

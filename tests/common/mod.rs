//! What the process-level tests share: one isolated deployment of the real `berth` binary
//! (its own database, Redis partition, port and processes), torn down on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_queue::Queue;
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

pub const SECRET: &str = "e2e-secret-0123456789abcdef";

pub fn base_db_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("BERTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn with_database(url: &str, db: &str) -> String {
    let (server, _) = url.rsplit_once('/').expect("DATABASE_URL has a database path");
    format!("{server}/{db}")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One isolated berth deployment: its own database, Redis partition, port and processes.
pub struct Deployment {
    pub db: String,
    pub db_url: String,
    pub partition: String,
    pub port: u16,
    pub logs: PathBuf,
    pub children: Vec<(String, Child)>,
}

impl Deployment {
    pub fn new() -> Deployment {
        let id = Uuid::new_v4().simple().to_string();
        let db = format!("berth_e2e_{}", &id[..12]);
        let logs = std::env::temp_dir().join(format!("berth-e2e-{}", &id[..12]));
        std::fs::create_dir_all(&logs).unwrap();
        Deployment {
            db_url: with_database(&base_db_url(), &db),
            db,
            partition: format!("test-{id}"),
            port: free_port(),
            logs,
            children: Vec::new(),
        }
    }

    pub fn command(&self, role: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.arg(role)
            .current_dir(&self.logs)
            .env_remove("BERTH_CONFIG")
            .env("BERTH_DATABASE__URL", &self.db_url)
            .env("BERTH_REDIS__URL", redis_url())
            .env("BERTH_REDIS__PARTITION", &self.partition)
            .env("BERTH_API__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("BERTH_AUTH__JWT_SECRET", SECRET)
            .env("BERTH_EXECUTOR__RETRY__BASE", "100ms")
            .env("BERTH_EXECUTOR__RETRY__CAP", "400ms")
            .env("BERTH_SCHEDULER__UNSCHEDULABLE_MAX_WAIT", "2s")
            .env("BERTH_CLUSTER__START_DELAY", "20ms")
            // A log follow of a task that never ends ends anyway, well within a client's
            // timeout (the fuzzer's is 20 s).
            .env("BERTH_API__MAX_LOG_FOLLOW", "5s")
            .env("RUST_LOG", "info");
        c
    }

    pub fn spawn(&mut self, role: &str, name: &str) {
        let out = std::fs::File::create(self.logs.join(format!("{name}.log"))).unwrap();
        let child =
            self.command(role).stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null()).spawn().unwrap();
        self.children.push((name.to_owned(), child));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let text = std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {name} ---\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n"));
        }
        out
    }

    pub async fn wait_ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("berth did not become ready\n{}", self.logs_tail());
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (db, base, partition) = (self.db.clone(), base_db_url(), self.partition.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&base).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("drop database if exists {db} with (force)")))
                        .execute(&mut c)
                        .await;
                }
            })
        })
        .join();
        Queue::purge_blocking(&redis_url(), &partition);
    }
}

pub async fn login(http: &reqwest::Client, d: &Deployment, user: &str, password: &str) -> String {
    let r =
        http.post(d.url("/v1/auth/login")).json(&json!({"username": user, "password": password})).send().await.unwrap();
    assert_eq!(r.status(), 200, "login {user}");
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

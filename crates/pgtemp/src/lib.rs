//! A throwaway PostgreSQL server: `initdb` and `pg_ctl` in a temporary
//! directory, listening on a free loopback port, stopped and removed when
//! dropped. What sluice's tests and `sluice bench --sink postgres` run
//! against; nothing else of sluice depends on it.
//!
//! The server's programs are found on `PATH`, else in the newest
//! `/usr/lib/postgresql/<version>/bin` (Debian's layout, where only a few
//! wrappers are on `PATH`). `initdb` refuses to run as root, so as root the
//! server runs as the `postgres` user when there is one, else `nobody`,
//! and its directory is handed to that user.
//!
//! ```no_run
//! let mut pg = sluice_pgtemp::PgServer::start(sluice_pgtemp::Durability::Off)?;
//! println!("{}", pg.url()); // postgres://sluice@127.0.0.1:<port>/postgres
//! pg.stop()?;               // an outage
//! pg.start_again()?;        // same port, same data
//! # Ok::<(), sluice_pgtemp::PgError>(())
//! ```

#![warn(missing_docs)]

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser the server is initialised with.
pub const USER: &str = "sluice";
/// Its password (password authentication over TCP, `scram-sha-256`).
pub const PASSWORD: &str = "sluice-test-password";

/// Why the server could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// `initdb` / `pg_ctl` are not installed.
    #[error(
        "PostgreSQL is not installed (no initdb and pg_ctl on PATH or in /usr/lib/postgresql/*/bin)"
    )]
    NotInstalled,
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("{program} failed ({status}): {output}")]
    Program {
        /// The command.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its output (and the server log's end, for `pg_ctl start`).
        output: String,
    },
}

/// Whether the server syncs its writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync = off`: quick, for tests (the data is thrown away anyway).
    Off,
    /// The server's defaults (`fsync = on`, `synchronous_commit = on`): what
    /// a real deployment pays for a COMMIT, for benchmarks.
    On,
}

/// The directory holding `initdb` and `pg_ctl`: on `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin`; `None` when PostgreSQL is not installed.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|d| has_both(d)));
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| {
                let e = e.ok()?;
                let version = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, bin)| has_both(bin))
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    })
}

/// A running (or stopped) throwaway server; see the [crate docs](crate).
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// The unprivileged user (uid, gid) the server runs as, when we are root.
    run_as: Option<(u32, u32)>,
    durability: Durability,
    /// Server options for TLS, once [`enable_tls`](PgServer::enable_tls)d.
    tls: Option<String>,
    running: bool,
}

impl PgServer {
    /// Initialises a database cluster in a new temporary directory and
    /// starts the server on a free loopback port.
    pub fn start(durability: Durability) -> Result<Self, PgError> {
        let bin = find_bin_dir().ok_or(PgError::NotInstalled)?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .map_err(io("create a temporary directory"))?;
        let run_as = unprivileged_user()?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(io("hand the directory to the server's user"))?;
        }
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).map_err(io("write the password file"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))
                .map_err(io("hand the password file to the server's user"))?;
        }
        let mut server = Self {
            bin,
            dir,
            port: 0,
            run_as,
            durability,
            tls: None,
            running: false,
        };
        let mut initdb = server.command("initdb");
        initdb
            .arg("-D")
            .arg(server.data_dir())
            .args(["-U", USER, "--no-locale", "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(&mut initdb, "initdb")?;
        // A free port may be taken between our probe and the server's bind:
        // try a few.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.start_again() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(PgError::NotInstalled))
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn start_again(&mut self) -> Result<(), PgError> {
        let fsync = match self.durability {
            Durability::Off => "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Durability::On => "",
        };
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=40 {fsync} {}",
            self.port,
            self.dir.path().display(),
            self.tls.as_deref().unwrap_or_default()
        );
        let log = self.dir.path().join("server.log");
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "-w", "-t", "30", "start"]);
        if let Err(PgError::Program {
            program,
            status,
            output,
        }) = run(&mut pg_ctl, "pg_ctl start")
        {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail = &tail[tail.floor_char_boundary(tail.len().saturating_sub(2_000))..];
            return Err(PgError::Program {
                program,
                status,
                output: format!("{output}\nserver log:\n{tail}"),
            });
        }
        self.running = true;
        Ok(())
    }

    /// Stops the server (`pg_ctl stop -m fast`: connections are ended at
    /// once, as in a database outage); [`start_again`](Self::start_again)
    /// brings it back.
    pub fn stop(&mut self) -> Result<(), PgError> {
        self.pg_ctl_stop("fast")
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<(), PgError> {
        if !self.running {
            return Ok(());
        }
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "stop"]);
        run(&mut pg_ctl, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// Turns TLS on with this certificate chain and key (PEM), restarting
    /// the server if it runs. Clients may still connect in plaintext.
    pub fn enable_tls(&mut self, cert_pem: &str, key_pem: &str) -> Result<(), PgError> {
        use std::os::unix::fs::PermissionsExt as _;
        let cert = self.dir.path().join("server.crt");
        let key = self.dir.path().join("server.key");
        std::fs::write(&cert, cert_pem).map_err(io("write the certificate"))?;
        std::fs::write(&key, key_pem).map_err(io("write the key"))?;
        // The server refuses a key that others can read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(io("protect the key"))?;
        if let Some((uid, gid)) = self.run_as {
            for file in [&cert, &key] {
                std::os::unix::fs::chown(file, Some(uid), Some(gid))
                    .map_err(io("hand the certificate to the server's user"))?;
            }
        }
        self.tls = Some(format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        ));
        if self.running {
            self.stop()?;
            self.start_again()?;
        }
        Ok(())
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://sluice@127.0.0.1:<port>/postgres` (the password is
    /// [`PASSWORD`], given apart).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// A libpq `key=value` connection string with the password, for
    /// clients of the tests themselves.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=postgres",
            self.port
        )
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `program` of the server's bin directory, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // `immediate`: the data is thrown away, no need for a clean shutdown.
        if let Err(e) = self.pg_ctl_stop("immediate") {
            eprintln!("sluice-pgtemp: stopping the server: {e}");
        }
    }
}

/// `(uid, gid)` of the user to run the server as when this process is root
/// (`postgres`, else `nobody`); `None` when not root.
fn unprivileged_user() -> Result<Option<(u32, u32)>, PgError> {
    // /proc/self belongs to the process's effective user.
    let euid = std::fs::metadata("/proc/self")
        .map_err(io("read this process's user"))?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io("read /etc/passwd"))?;
    let user = |name: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    Ok(user("postgres").or_else(|| user("nobody")))
}

fn free_port() -> Result<u16, PgError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("find a free port"))?;
    Ok(l.local_addr().map_err(io("find a free port"))?.port())
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> PgError + '_ {
    move |source| PgError::Io {
        what: what.to_owned(),
        source,
    }
}

fn run(c: &mut Command, program: &str) -> Result<Output, PgError> {
    let out = c.output().map_err(io(program))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(PgError::Program {
            program: program.to_owned(),
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

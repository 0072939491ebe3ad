//! The studio's database: one SQLite file (rusqlite's bundled SQLite, no system library)
//! holding the uploads and the renders, marked as nst's by `PRAGMA application_id` and
//! versioned by `PRAGMA user_version`, migrated forward on open. A file that is not SQLite,
//! belongs to another program or comes from a newer nst is refused, never overwritten.

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// `PRAGMA application_id` of a studio database ("nsts").
pub(crate) const APPLICATION_ID: i32 = 0x6e73_7473;

/// The migrations, in order: applying the first `n` gives schema version `n`.
const MIGRATIONS: &[&str] = &[
    // 1: uploads and jobs; the queue in id order.
    "CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        ext TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        seconds REAL,
        loss REAL,
        error TEXT
    );",
    // 2: reprioritising: an explicit queue position (the old order kept).
    "ALTER TABLE jobs ADD COLUMN queue_pos REAL;
    UPDATE jobs SET queue_pos = id;",
];

/// The schema version this nst writes.
pub(crate) const VERSION: usize = MIGRATIONS.len();

/// Where a render stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Waiting its turn.
    Queued,
    Running,
    /// Stopped by the user (resumable from its checkpoint).
    Stopped,
    Done,
    /// Ended with an error (`error` says which).
    Failed,
    Canceled,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Stopped => "stopped",
            State::Done => "done",
            State::Failed => "failed",
            State::Canceled => "canceled",
        }
    }

    fn parse(s: &str) -> Result<State> {
        Ok(match s {
            "queued" => State::Queued,
            "running" => State::Running,
            "stopped" => State::Stopped,
            "done" => State::Done,
            "failed" => State::Failed,
            "canceled" => State::Canceled,
            other => bail!("the database names an unknown job state {other:?}"),
        })
    }
}

/// One row of `jobs`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct Job {
    pub(crate) id: i64,
    /// The settings, as the client sent them (validated).
    pub(crate) spec: serde_json::Value,
    pub(crate) state: State,
    pub(crate) created: f64,
    pub(crate) started: Option<f64>,
    pub(crate) finished: Option<f64>,
    /// The render's own time (across its runs).
    pub(crate) seconds: Option<f64>,
    /// The final objective.
    pub(crate) loss: Option<f64>,
    pub(crate) error: Option<String>,
    pub(crate) queue_pos: f64,
}

/// One row of `uploads`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct Upload {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) ext: String,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) bytes: u64,
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The studio's database.
pub(crate) struct Db {
    conn: Connection,
}

const JOB_COLUMNS: &str =
    "id, spec, state, created, started, finished, seconds, loss, error, queue_pos";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Job, String)> {
    let spec: String = r.get(1)?;
    let state: String = r.get(2)?;
    Ok((
        Job {
            id: r.get(0)?,
            spec: serde_json::from_str(&spec).unwrap_or(serde_json::Value::Null),
            state: State::Queued,
            created: r.get(3)?,
            started: r.get(4)?,
            finished: r.get(5)?,
            seconds: r.get(6)?,
            loss: r.get(7)?,
            error: r.get(8)?,
            queue_pos: r.get(9)?,
        },
        state,
    ))
}

fn finish_row(row: (Job, String)) -> Result<Job> {
    let (mut job, state) = row;
    job.state = State::parse(&state)?;
    Ok(job)
}

impl Db {
    /// Opens (or creates) the database at `path`, migrating an older schema forward. A file
    /// that is not an SQLite database, is another program's, or was made by a newer nst is
    /// an error, and the file is left as it was.
    pub(crate) fn open(path: &Path) -> Result<Db> {
        let shown = path.display();
        let conn = Connection::open(path).with_context(|| format!("cannot open {shown}"))?;
        let refuse = |why: &str| -> anyhow::Error {
            anyhow::anyhow!(
                "{shown} {why}; nst studio will not change it: move it away or choose another --data folder"
            )
        };
        // The first read of the header: a file that is not SQLite fails here.
        let id: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|_| refuse("is not an SQLite database (it may be corrupt)"))?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(|_| refuse("is not an SQLite database (it may be corrupt)"))?;
        if id != APPLICATION_ID && (id != 0 || tables > 0) {
            return Err(refuse("is another program's database, not nst studio's"));
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|_| refuse("cannot be read"))?;
        if version as usize > VERSION {
            return Err(refuse(&format!(
                "was written by a newer nst (schema version {version}; this nst knows up to {VERSION})"
            )));
        }
        if id == 0 {
            conn.pragma_update(None, "journal_mode", "WAL")
                .context("cannot set up the database's journal")?;
        }
        let mut db = Db { conn };
        db.migrate(version as usize, VERSION)?;
        db.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .context("cannot configure the database")?;
        Ok(db)
    }

    /// Applies migrations `from..to` in one transaction.
    fn migrate(&mut self, from: usize, to: usize) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction()
            .context("cannot migrate the database")?;
        for (i, sql) in MIGRATIONS.iter().enumerate().take(to).skip(from) {
            tx.execute_batch(sql)
                .with_context(|| format!("cannot migrate the database to version {}", i + 1))?;
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .context("cannot mark the database")?;
        tx.pragma_update(None, "user_version", to as i64)
            .context("cannot mark the database's version")?;
        tx.commit().context("cannot migrate the database")
    }

    /// The schema version of the open database.
    #[cfg(test)]
    pub(crate) fn version(&self) -> Result<usize> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize)
    }

    /// Records an upload (its files are already in place); an upload of the same bytes is
    /// the same row.
    pub(crate) fn add_upload(&self, u: &Upload) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO uploads (id, name, ext, width, height, bytes, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    u.id,
                    u.name,
                    u.ext,
                    u.width,
                    u.height,
                    u.bytes as i64,
                    now()
                ],
            )
            .context("cannot record the upload")?;
        Ok(())
    }

    pub(crate) fn upload(&self, id: &str) -> Result<Option<Upload>> {
        self.conn
            .query_row(
                "SELECT id, name, ext, width, height, bytes FROM uploads WHERE id = ?1",
                [id],
                |r| {
                    Ok(Upload {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        ext: r.get(2)?,
                        width: r.get(3)?,
                        height: r.get(4)?,
                        bytes: r.get::<_, i64>(5)? as u64,
                    })
                },
            )
            .optional()
            .context("cannot read the uploads")
    }

    /// Adds a job at the end of the queue; its id.
    pub(crate) fn add_job(&self, spec: &serde_json::Value) -> Result<i64> {
        let pos: f64 = self
            .conn
            .query_row(
                "SELECT coalesce(max(queue_pos), 0) + 1 FROM jobs",
                [],
                |r| r.get(0),
            )
            .context("cannot read the queue")?;
        self.conn
            .execute(
                "INSERT INTO jobs (spec, state, created, queue_pos) VALUES (?1, 'queued', ?2, ?3)",
                params![spec.to_string(), now(), pos],
            )
            .context("cannot add the render")?;
        Ok(self.conn.last_insert_rowid())
    }

    pub(crate) fn job(&self, id: i64) -> Result<Option<Job>> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_row,
            )
            .optional()
            .context("cannot read the renders")?;
        row.map(finish_row).transpose()
    }

    /// Every job: the queue in its order first, then the rest newest first.
    pub(crate) fn jobs(&self) -> Result<Vec<Job>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs ORDER BY
                 CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END,
                 CASE WHEN state IN ('running', 'queued') THEN queue_pos ELSE -id END"
        ))?;
        let rows = st
            .query_map([], job_row)
            .context("cannot read the renders")?;
        let mut out = Vec::new();
        for r in rows {
            out.push(finish_row(r.context("cannot read the renders")?)?);
        }
        Ok(out)
    }

    /// The next job to run: the queued one first in the queue.
    pub(crate) fn next_queued(&self) -> Result<Option<Job>> {
        let row = self
            .conn
            .query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued'
                     ORDER BY queue_pos, id LIMIT 1"
                ),
                [],
                job_row,
            )
            .optional()
            .context("cannot read the queue")?;
        row.map(finish_row).transpose()
    }

    pub(crate) fn set_state(&self, id: i64, state: State) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET state = ?2 WHERE id = ?1",
                params![id, state.name()],
            )
            .context("cannot update the render")?;
        Ok(())
    }

    /// A job starts running (its first start time is kept).
    pub(crate) fn started(&self, id: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET state = 'running', error = NULL,
                     started = coalesce(started, ?2) WHERE id = ?1",
                params![id, now()],
            )
            .context("cannot update the render")?;
        Ok(())
    }

    /// A job ended: its state, time, loss and error.
    pub(crate) fn ended(
        &self,
        id: i64,
        state: State,
        seconds: Option<f64>,
        loss: Option<f64>,
        error: Option<&str>,
    ) -> Result<()> {
        let finished = matches!(state, State::Done | State::Failed | State::Canceled).then(now);
        self.conn
            .execute(
                "UPDATE jobs SET state = ?2, finished = ?3, seconds = coalesce(?4, seconds),
                     loss = coalesce(?5, loss), error = ?6 WHERE id = ?1",
                params![id, state.name(), finished, seconds, loss, error],
            )
            .context("cannot update the render")?;
        Ok(())
    }

    /// Puts a job back in the queue: at its front (`front`) or its end.
    pub(crate) fn requeue(&self, id: i64, front: bool) -> Result<()> {
        let sql = if front {
            "UPDATE jobs SET state = 'queued', finished = NULL,
                 queue_pos = (SELECT coalesce(min(queue_pos), 1) - 1 FROM jobs WHERE state = 'queued')
             WHERE id = ?1"
        } else {
            "UPDATE jobs SET state = 'queued', finished = NULL,
                 queue_pos = (SELECT coalesce(max(queue_pos), 0) + 1 FROM jobs)
             WHERE id = ?1"
        };
        self.conn
            .execute(sql, [id])
            .context("cannot update the queue")?;
        Ok(())
    }

    /// After a restart: a job left running by a server that died goes back to the front
    /// of the queue, to resume from its checkpoint.
    pub(crate) fn recover(&self) -> Result<usize> {
        let running: Vec<i64> = {
            let mut st = self
                .conn
                .prepare("SELECT id FROM jobs WHERE state = 'running' ORDER BY queue_pos")?;
            let ids = st.query_map([], |r| r.get(0))?;
            ids.collect::<rusqlite::Result<_>>()?
        };
        for id in running.iter().rev() {
            self.requeue(*id, true)?;
        }
        Ok(running.len())
    }

    /// Moves a queued job: `top`, `up`, `down` or `bottom`. False when `to` is unknown.
    pub(crate) fn move_job(&mut self, id: i64, to: &str) -> Result<bool> {
        if !["top", "up", "down", "bottom"].contains(&to) {
            return Ok(false);
        }
        let tx = self.conn.transaction()?;
        let queue: Vec<(i64, f64)> = {
            let mut st = tx.prepare(
                "SELECT id, queue_pos FROM jobs WHERE state = 'queued' ORDER BY queue_pos, id",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let Some(i) = queue.iter().position(|(j, _)| *j == id) else {
            return Ok(true);
        };
        let set = |id: i64, pos: f64| {
            tx.execute(
                "UPDATE jobs SET queue_pos = ?2 WHERE id = ?1",
                params![id, pos],
            )
        };
        match to {
            "top" => {
                set(id, queue[0].1 - 1.0)?;
            }
            "bottom" => {
                set(id, queue[queue.len() - 1].1 + 1.0)?;
            }
            "up" | "down" => {
                let j = if to == "up" {
                    i.checked_sub(1)
                } else {
                    Some(i + 1).filter(|&j| j < queue.len())
                };
                if let Some(j) = j {
                    set(queue[i].0, queue[j].1)?;
                    set(queue[j].0, queue[i].1)?;
                }
            }
            _ => {}
        }
        tx.commit()?;
        Ok(true)
    }

    /// Removes a job's row.
    pub(crate) fn delete_job(&self, id: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM jobs WHERE id = ?1", [id])
            .context("cannot delete the render")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nst-studio-db-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_older_database_is_migrated_and_keeps_its_jobs_in_order() {
        let d = dir("migrate");
        let path = d.join("studio.sqlite");
        {
            // A version-1 database, as the first studio wrote it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for state in ["done", "queued", "queued"] {
                conn.execute(
                    "INSERT INTO jobs (spec, state, created) VALUES ('{}', ?1, 1.0)",
                    [state],
                )
                .unwrap();
            }
        }
        let mut db = Db::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), VERSION);
        assert_eq!(db.next_queued().unwrap().unwrap().id, 2);
        assert!(db.move_job(3, "top").unwrap());
        assert_eq!(db.next_queued().unwrap().unwrap().id, 3);
        let ids: Vec<i64> = db.jobs().unwrap().iter().map(|j| j.id).collect();
        assert_eq!(ids, [3, 2, 1]);
        // Opening again changes nothing.
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.next_queued().unwrap().unwrap().id, 3);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn foreign_corrupt_and_newer_files_are_refused_and_left_alone() {
        let d = dir("refuse");
        let junk = d.join("junk.sqlite");
        let bytes =
            b"this is not a database, it is a text file with enough bytes in it ..".repeat(20);
        std::fs::write(&junk, &bytes).unwrap();
        let e = Db::open(&junk).err().unwrap().to_string();
        assert!(e.contains("is not an SQLite database"), "{e}");
        assert_eq!(std::fs::read(&junk).unwrap(), bytes);

        let foreign = d.join("foreign.sqlite");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE photos (id INTEGER); INSERT INTO photos VALUES (1);")
            .unwrap();
        let before = std::fs::read(&foreign).unwrap();
        let e = Db::open(&foreign).err().unwrap().to_string();
        assert!(e.contains("another program's database"), "{e}");
        assert_eq!(std::fs::read(&foreign).unwrap(), before);

        let newer = d.join("newer.sqlite");
        drop(Db::open(&newer).unwrap());
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = Db::open(&newer).err().unwrap().to_string();
        assert!(e.contains("newer nst"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_queue_moves_and_a_dead_servers_render_resumes_first() {
        let d = dir("queue");
        let mut db = Db::open(&d.join("s.sqlite")).unwrap();
        let ids: Vec<i64> = (0..4)
            .map(|_| db.add_job(&serde_json::json!({})).unwrap())
            .collect();
        db.started(ids[0]).unwrap();
        assert!(db.move_job(ids[3], "up").unwrap());
        assert!(db.move_job(ids[1], "bottom").unwrap());
        assert!(!db.move_job(ids[2], "sideways").unwrap());
        let order = |db: &Db| -> Vec<i64> {
            db.jobs()
                .unwrap()
                .iter()
                .filter(|j| j.state == State::Queued)
                .map(|j| j.id)
                .collect()
        };
        assert_eq!(order(&db), [ids[3], ids[2], ids[1]]);
        assert_eq!(db.recover().unwrap(), 1);
        assert_eq!(order(&db), [ids[0], ids[3], ids[2], ids[1]]);
        db.ended(ids[0], State::Done, Some(2.0), Some(5.0), None)
            .unwrap();
        let j = db.job(ids[0]).unwrap().unwrap();
        assert_eq!(
            (j.state, j.seconds, j.loss),
            (State::Done, Some(2.0), Some(5.0))
        );
        assert!(j.finished.is_some());
        std::fs::remove_dir_all(&d).unwrap();
    }
}

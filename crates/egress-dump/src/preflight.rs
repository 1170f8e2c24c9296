//! `egress-dump --check`: the output checked as a writer (everything a dump does there,
//! under a temporary key it removes), and the database: the login, the server's version
//! and role (primary or standby), and `SELECT` on each listed table. Nothing else is
//! changed.

use egress_common::preflight::{self, Finding, Findings, Status, Use};

use crate::catalog::{self, Problem};
use crate::pg::Params;
use crate::pg::{self, Session};
use crate::settings::Settings;

/// Every finding for the output and the database.
pub async fn run(settings: &Settings) -> Vec<Finding> {
    let mut lines = Vec::new();
    match settings.output.open(&settings.s3, settings.local).await {
        Ok(store) => lines.extend(preflight::check_store(&*store, "output", Use::Write).await),
        Err(e) => lines.push(Finding {
            side: "output".into(),
            capability: "configuration",
            status: Status::Fail,
            detail: egress_common::error::one_line(&anyhow::Error::from(e)),
        }),
    }
    let mut found = Findings::new("database");
    check_database(settings, &mut found).await;
    lines.extend(found.lines);
    lines
}

/// The findings of settings that cannot be built: one line naming the problem.
pub fn unusable(error: &egress_common::ConfigError) -> Vec<Finding> {
    vec![Finding {
        side: "flags".into(),
        capability: "configuration",
        status: Status::Fail,
        detail: error.to_string(),
    }]
}

async fn check_database(settings: &Settings, found: &mut Findings) {
    let conninfo = settings.database_url.as_ref().map(|u| u.expose());
    let target = Params::resolve(conninfo, &pg::env_from_process())
        .map_err(anyhow::Error::from)
        .and_then(|params| Ok(pg::resolve(&params, settings.timeout)?));
    let session = match target {
        Ok(target) => target
            .connect()
            .await
            .map(|s| (s, target.display.clone()))
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    let (session, display) = match session {
        Ok(s) => s,
        Err(e) => {
            return found.add("login", Status::Fail, egress_common::error::one_line(&e));
        }
    };
    found.add("login", Status::Ok, format!("logged in to {display}"));
    server(&session, found).await;
    readable_tables(settings, &session, found).await;
}

/// The server's version, and whether it is a standby (whose long reads recovery may cancel).
async fn server(session: &Session, found: &mut Findings) {
    const SQL: &str = "SELECT current_setting('server_version'), pg_is_in_recovery(), \
                       current_setting('max_standby_streaming_delay'), current_setting('hot_standby_feedback')";
    match session.query_one(SQL, &[]).await {
        Ok(row) => {
            let (version, standby): (String, bool) = (row.get(0), row.get(1));
            let role = match standby {
                false => "primary".to_string(),
                true => format!(
                    "standby (max_standby_streaming_delay {}, hot_standby_feedback {}): a recovery conflict may cancel a long read",
                    row.get::<_, String>(2),
                    row.get::<_, String>(3)
                ),
            };
            found.add(
                "server",
                Status::Ok,
                format!("PostgreSQL {version}, {role}"),
            );
        }
        Err(e) => found.add("server", Status::Fail, e.to_string()),
    }
}

/// `SELECT` on each listed table.
async fn readable_tables(settings: &Settings, session: &Session, found: &mut Findings) {
    for table in &settings.tables {
        let line = match catalog::resolve(session, table).await {
            Ok(Ok(t)) => (
                Status::Ok,
                format!("'{table}': SELECT on {}.{}", t.schema, t.name),
            ),
            Ok(Err(Problem::Missing)) => (
                Status::Fail,
                format!("'{table}' does not exist (or is not visible to this user): fix TABLES"),
            ),
            Ok(Err(Problem::NotReadable)) => (
                Status::Fail,
                format!("'{table}' is not readable: GRANT SELECT to the dump user"),
            ),
            Ok(Err(Problem::NotATable(kind))) => (
                Status::Fail,
                format!("'{table}' is not a table or view (relkind '{kind}')"),
            ),
            Err(e) => (Status::Fail, format!("'{table}': {e}")),
        };
        found.add("table", line.0, line.1);
    }
}

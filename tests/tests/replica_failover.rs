//! kill -9 of a replica while agents claim: an agent with `server_urls`
//! fails over to the survivor, every launch is charged exactly once, and the
//! survivor takes the background work (here: mailing admin notices).
//!
//! Needs the throwaway PostgreSQL cluster of tests/run.sh (see replicas.rs).

use flex_e2e::agent::{eventually, Agent, Rates, Running, USER, WAIT};
use flex_e2e::smtp::SmtpSink;
use flex_e2e::{Server, ServerOpts};
use flex_server::store::testing::TestDatabase;

/// Packs of 20 tokens: the low-balance line is 4. A long window, so that a
/// relaunch is inside it; mail checked every 100 ms, the leader asked often.
fn config(smtp_port: u16) -> String {
    format!(
        "background_interval = \"200ms\"\n\
         [policy]\nwindow = \"10m\"\nheartbeat_interval = \"1s\"\nclose_grace = \"1s\"\n\
         pack_sizes = [20]\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n\
         from = \"Flex <flex@example.com>\"\nto = [\"it@example.com\"]\n\
         check_interval = \"100ms\"\nretry = \"200ms\"\n"
    )
}

/// The pid in the application name of the connection holding the leader's lock.
async fn leader_pid(url: &str) -> Option<u32> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).ok()?;
        let row = c
            .query_opt(
                "SELECT application_name FROM pg_stat_activity
                 WHERE application_name LIKE 'flex-server leader pid=%'",
                &[],
            )
            .ok()??;
        let name: String = row.get(0);
        name.rsplit('=').next()?.parse().ok()
    })
    .await
    .unwrap()
}

/// Whether the mail of the notice of `kind` is recorded as sent.
async fn mail_recorded(url: &str, kind: &'static str) -> bool {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let sent: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM notices n JOIN notice_mail m ON m.notice_id = n.id
                 WHERE n.kind = $1 AND m.sent_at IS NOT NULL",
                &[&kind],
            )
            .unwrap()
            .get(0);
        sent == 1
    })
    .await
    .unwrap()
}

async fn charges(s: &Server) -> Vec<serde_json::Value> {
    s.charges().await
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_replica_mid_claims_fails_agents_over_and_moves_the_background_work() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let sink = SmtpSink::start(0);
    let rates = Rates::unique();
    let opts = ServerOpts {
        config: Some(config(sink.port)),
        rates: Some(rates.toml.clone()),
        database_url: Some(db.url().to_string()),
        ..Default::default()
    };
    // A first, and leading, before B starts: the test kills the leader.
    let mut a = Server::start(opts.clone());
    let a_pid = a.pid().unwrap();
    eventually("replica A leads", WAIT, || async {
        (leader_pid(db.url()).await == Some(a_pid)).then_some(())
    })
    .await;
    let b = Server::start(opts);
    a.buy(20).await;
    b.flex_user(USER).await;

    // The agent knows both replicas, A first.
    let mut agent = Agent::enrolled(&a, "").await;
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let text = text.replace(
        &format!("server_url = \"{}\"", a.url),
        &format!("server_urls = [\"{}\", \"{}\"]", a.url, b.url),
    );
    std::fs::write(&agent.config, text).unwrap();
    agent.spawn();

    let launch = |product: &'static str| Running::wrapper(&agent, product);
    let charged = |n: usize| {
        let b = &b;
        async move {
            eventually(&format!("{n} charges"), WAIT, || async {
                let c = charges(b).await;
                (c.len() >= n).then_some(c)
            })
            .await
        }
    };
    let _autocad = launch("autocad");
    charged(1).await;
    let _revit = launch("revit");
    charged(2).await;
    // 20 - 7 - 10 = 3: the low-balance notice, mailed by the leader, A.
    let mail = sink.next(15);
    assert_eq!(mail["subject"], "[Flex] Low token balance", "{mail}");
    eventually("A records the mail as sent", WAIT, || async {
        mail_recorded(db.url(), "low_balance").await.then_some(())
    })
    .await;

    // A dies while the next launch claims (before, during or after A
    // answers: the agent resends the same claim id to B if it must).
    let _fusion = launch("fusion");
    a.kill9();
    let ledger = charged(3).await;
    let products: Vec<&str> = ledger
        .iter()
        .map(|c| c["product"].as_str().unwrap())
        .collect();
    assert_eq!(
        products,
        ["autocad", "revit", "fusion"],
        "one charge per launch"
    );
    assert_eq!(b.balance().await, 0);

    // The survivor now leads and mails the out-of-tokens notice, once.
    let mail = sink.next(15);
    assert_eq!(
        mail["subject"], "[Flex] Out of tokens: Flex launches are refused",
        "{mail}"
    );
    assert_eq!(leader_pid(db.url()).await, b.pid());

    // A relaunch inside the window costs nothing, through B.
    let _again = launch("autocad");
    eventually("the agent holds two autocad sessions", WAIT, || async {
        let n = agent
            .sessions()
            .iter()
            .filter(|s| s["product"] == "autocad")
            .count();
        (n >= 2).then_some(())
    })
    .await;
    assert_eq!(charges(&b).await.len(), 3, "the relaunch was free");
    let claim_ids: std::collections::BTreeSet<&str> = ledger
        .iter()
        .map(|c| c["claim_id"].as_str().unwrap())
        .collect();
    assert_eq!(claim_ids.len(), 3);
}

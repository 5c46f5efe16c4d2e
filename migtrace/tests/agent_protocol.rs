//! The coordinator's side of the agent protocol against scripted stand-ins for an agent:
//! what it refuses (another version, an answer longer than it can be). No root needed.

use migtrace::probe::agent::{ANSWER_LIMIT, Agent, AgentError, AgentOptions};

/// A scripted stand-in for an agent (`sh -c SCRIPT`; the appended `--domain …` words
/// become the script's $0, $1, …).
async fn scripted(script: &str) -> Result<Agent, AgentError> {
    let opts = AgentOptions { domain: "d".into(), ..AgentOptions::default() };
    Agent::spawn("h", &["sh".to_owned(), "-c".to_owned(), script.to_owned()], &opts).await
}

fn ready(version: &str) -> String {
    format!(r#"printf '%s\n' '{{"ready":{{"host":"h","kernel":"k","version":"{version}"}}}}'"#)
}

#[tokio::test]
async fn an_agent_of_another_version_is_refused() {
    let e = scripted(&format!("{}; cat >/dev/null", ready("0.0.0-other"))).await.err().expect("refused");
    let ours = env!("CARGO_PKG_VERSION");
    assert_eq!(
        e.to_string(),
        format!(
            "tracing agent on h is migtrace 0.0.0-other, this is migtrace {ours}: install migtrace {ours} there \
             (the agent's answers and traces follow its version)"
        )
    );
    let e = scripted(r#"echo '{"ready":{}}'; cat >/dev/null"#).await.err().expect("refused");
    assert!(e.to_string().contains("is migtrace of unknown version"), "{e}");
    let agent = scripted(&format!("{}; read -r quit", ready(ours))).await.expect("the same version");
    agent.quit().await;
}

#[tokio::test]
async fn an_answer_longer_than_it_can_be_is_refused() {
    // Valid JSON, 100 kB: a clock answer is a few dozen bytes.
    let script = format!(
        r#"{}; read -r request; printf '{{"t":1,"pad":"'; head -c 100000 /dev/zero | tr '\0' a; printf '"}}\n'; read -r quit"#,
        ready(env!("CARGO_PKG_VERSION"))
    );
    let mut agent = scripted(&script).await.expect("agent");
    let e = agent.clock(1).await.expect_err("refused");
    assert!(matches!(&e, AgentError::TooLong { what, limit, .. } if what == "clock" && *limit == ANSWER_LIMIT), "{e}");
    agent.quit().await;
}

use serde_json::{json, Value};

use super::*;
use crate::manifest::JobSection;

/// Recorded parameters in the shape commits carry them.
fn params() -> Value {
    json!({
        "tick_ms": 1000,
        "checkpoint_interval_ms": 10000,
        "max_out_of_orderness_ms": 10000,
        "dedup_horizon_ms": 600000,
        "windows": [
            {"name": "merchant_5m", "kind": {"Tumbling": {"size_ms": 300000}}, "group_by": ["merchant_id"]},
            {"name": "status_1m", "kind": {"Tumbling": {"size_ms": 60000}}, "group_by": ["status"]},
            {"name": "customer_session", "kind": {"Session": {"gap_ms": 1800000}}, "group_by": ["customer_id"]}
        ],
        "txn_z": {"z_threshold": 3.5, "min_history": 20},
        "window_z": {"window": "status_1m", "z_threshold": 3.0}
    })
}

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = params();
    f(&mut v);
    v
}

fn window<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    v["windows"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|w| w["name"] == name)
        .unwrap()
}

#[test]
fn differences_name_each_changed_field_and_match_named_lists_by_name() {
    // (new parameters, differences). A positional list compare reports a
    // reorder; a shallow compare names no path.
    let rows: Vec<(Value, Vec<&str>)> = vec![
        (params(), vec![]),
        (
            edit(|v| v["windows"].as_array_mut().unwrap().reverse()),
            vec![],
        ),
        (
            edit(|v| v["dedup_horizon_ms"] = json!(300000)),
            vec!["dedup_horizon_ms: 600000 → 300000"],
        ),
        (
            edit(|v| window(v, "merchant_5m")["kind"] = json!({"Tumbling": {"size_ms": 600000}})),
            vec!["windows[merchant_5m].kind.Tumbling.size_ms: 300000 → 600000"],
        ),
        (
            edit(|v| {
                let ws = v["windows"].as_array_mut().unwrap();
                ws.retain(|w| w["name"] != "customer_session");
                let mut extra = ws[0].clone();
                extra["name"] = json!("status_2m");
                ws.push(extra);
            }),
            vec![
                "windows[customer_session]: removed",
                "windows[status_2m]: added",
            ],
        ),
        (
            edit(|v| v["outputs"] = json!({"rejects": false})),
            vec!["outputs: added"],
        ),
    ];
    for (i, (new, want)) in rows.iter().enumerate() {
        assert_eq!(differences(&params(), new), *want, "row {i}");
    }
}

#[test]
fn only_operators_whose_own_configuration_changed_lose_their_state() {
    // Plausible wrong rules: every window change makes the window detector
    // stale (merchant_5m row), a removed window counts as stale (it has no
    // state to keep), a changed bound between ticks is restorable.
    type Row = (Value, Result<Vec<&'static str>, &'static str>);
    let rows: Vec<Row> = vec![
        (params(), Ok(vec![])),
        (
            edit(|v| v["max_out_of_orderness_ms"] = json!(20000)),
            Ok(vec![]),
        ),
        (
            edit(|v| window(v, "status_1m")["kind"] = json!({"Tumbling": {"size_ms": 120000}})),
            Ok(vec!["window:status_1m", "window_z"]),
        ),
        (
            edit(|v| window(v, "merchant_5m")["group_by"] = json!(["country"])),
            Ok(vec!["window:merchant_5m"]),
        ),
        (
            edit(|v| {
                v["windows"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|w| w["name"] != "customer_session")
            }),
            Ok(vec![]),
        ),
        (
            edit(|v| {
                v["dedup_horizon_ms"] = json!(1);
                v["txn_z"]["z_threshold"] = json!(4.0);
            }),
            Ok(vec!["dedup", "txn_z"]),
        ),
        (
            edit(|v| v["window_z"]["window"] = json!("merchant_5m")),
            Ok(vec!["window_z"]),
        ),
        (
            edit(|v| v["tick_ms"] = json!(500)),
            Err("tick_ms changed (1000 → 500)"),
        ),
        (
            edit(|v| v["checkpoint_interval_ms"] = json!(5000)),
            Err("checkpoint_interval_ms changed (10000 → 5000)"),
        ),
    ];
    for (i, (new, want)) in rows.iter().enumerate() {
        let got = stale_operators(&params(), new);
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(g, w, "row {i}"),
            (Err(w), Err(g)) => assert!(g.starts_with(w), "row {i}: {g}"),
            _ => panic!("row {i}: {got:?}"),
        }
    }
}

fn position(source: &str, partition: u32) -> Position {
    Position {
        source: source.into(),
        partition,
        offset: 10,
        max_ts: None,
        token: None,
    }
}

/// A commit of epoch 60000 over two files and a one-partition reference.
fn commit(params: Option<Value>) -> Manifest {
    Manifest::new(
        60_000,
        vec![],
        JobSection {
            positions: vec![
                position("files", 0),
                position("files", 1),
                position("merchants", 0),
            ],
            inputs: vec!["file:a".into(), "file:b".into()],
            ends: vec![Some(5), None],
            reference_inputs: vec!["generator-merchants:7".into()],
            reference_ends: vec![None],
            params_fingerprint: "fp".into(),
            params,
            ..JobSection::default()
        },
    )
}

struct Now {
    params: Value,
    fingerprint: &'static str,
    allow: bool,
    inputs: Vec<String>,
    partitions: Option<u32>,
    reference: Option<Vec<String>>,
}

impl Now {
    fn same() -> Now {
        Now {
            params: params(),
            fingerprint: "fp",
            allow: false,
            inputs: vec!["file:a".into(), "file:b".into()],
            partitions: Some(2),
            reference: Some(vec!["generator-merchants:7".into()]),
        }
    }
    fn job(&self) -> Job<'_> {
        Job {
            root: "/out",
            params: &self.params,
            fingerprint: self.fingerprint,
            allow_config_change: self.allow,
            reference_name: "merchants",
            inputs: &self.inputs,
            partitions: self.partitions,
            reference_inputs: self.reference.as_deref(),
        }
    }
}

#[test]
fn a_resume_is_refused_when_it_would_mix_two_computations() {
    let changed_dedup = || {
        let mut n = Now::same();
        n.params["dedup_horizon_ms"] = json!(1);
        n
    };
    let input_changed = |reference, partition, was: &str, now: Option<&str>| {
        Err(Refusal::InputChanged {
            reference,
            epoch: 60_000,
            root: "/out".into(),
            partition,
            was: was.into(),
            now: now.map(str::to_owned),
        })
    };
    // Each row a rule a plausible wrong check gets wrong: comparing the
    // reference's positions with the main inputs (partition 0 of both),
    // refusing a new trailing input no commit read, counting reference
    // positions as main partitions, counting Kinesis shards at all,
    // refusing an unchanged fingerprint-only commit.
    type Row = (Option<Value>, Now, Result<Plan, Refusal>);
    let plan = |stale: Vec<&str>, changes: Vec<&str>| Plan {
        stale: stale.into_iter().map(String::from).collect(),
        changes: changes.into_iter().map(String::from).collect(),
        ends: vec![Some(5), None],
        reference_ends: vec![None],
    };
    let rows: Vec<Row> = vec![
        (Some(params()), Now::same(), Ok(plan(vec![], vec![]))),
        (None, Now::same(), Ok(plan(vec![], vec![]))),
        (
            None,
            Now {
                fingerprint: "other",
                ..Now::same()
            },
            Err(Refusal::ConfigChanged {
                epoch: 60_000,
                root: "/out".into(),
                changes: vec![
                    "(this commit records only a fingerprint of its configuration)".into(),
                ],
            }),
        ),
        (
            None,
            Now {
                fingerprint: "other",
                allow: true,
                ..Now::same()
            },
            Err(Refusal::ConfigUnrecorded { epoch: 60_000 }),
        ),
        (
            Some(params()),
            changed_dedup(),
            Err(Refusal::ConfigChanged {
                epoch: 60_000,
                root: "/out".into(),
                changes: vec!["dedup_horizon_ms: 600000 → 1".into()],
            }),
        ),
        (
            Some(params()),
            Now {
                allow: true,
                ..changed_dedup()
            },
            Ok(plan(vec!["dedup"], vec!["dedup_horizon_ms: 600000 → 1"])),
        ),
        (
            Some(params()),
            Now {
                inputs: vec!["file:a".into(), "file:c".into()],
                ..Now::same()
            },
            input_changed(false, 1, "file:b", Some("file:c")),
        ),
        (
            Some(params()),
            Now {
                inputs: vec!["file:a".into()],
                partitions: Some(1),
                ..Now::same()
            },
            input_changed(false, 1, "file:b", None),
        ),
        (
            Some(params()),
            Now {
                inputs: vec!["file:a".into(), "file:b".into(), "file:c".into()],
                partitions: Some(3),
                ..Now::same()
            },
            Ok(plan(vec![], vec![])),
        ),
        (
            Some(params()),
            Now {
                reference: Some(vec!["generator-merchants:8".into()]),
                ..Now::same()
            },
            input_changed(
                true,
                0,
                "generator-merchants:7",
                Some("generator-merchants:8"),
            ),
        ),
        (
            Some(params()),
            Now {
                reference: None,
                ..Now::same()
            },
            Ok(plan(vec![], vec![])),
        ),
    ];
    for (i, (recorded, now, want)) in rows.into_iter().enumerate() {
        assert_eq!(plan_of(&commit(recorded), &now), want, "row {i}");
    }
}

fn plan_of(m: &Manifest, now: &Now) -> Result<Plan, Refusal> {
    plan(m, &now.job())
}

#[test]
fn positions_beyond_the_input_are_refused_unless_partitions_come_and_go() {
    // Inputs recorded for only the first partition (an older commit): the
    // position count is what catches a shrunken input.
    let mut m = commit(Some(params()));
    m.job.inputs.truncate(1);
    let shrunk = Now {
        inputs: vec!["file:a".into()],
        partitions: Some(1),
        ..Now::same()
    };
    assert_eq!(
        plan_of(&m, &shrunk),
        Err(Refusal::TooManyPositions {
            epoch: 60_000,
            positions: 2,
            partitions: 1
        })
    );
    // Kinesis: trimmed shards leave positions the stream no longer lists.
    let shards = Now {
        partitions: None,
        ..shrunk
    };
    assert!(plan_of(&m, &shards).is_ok());
}

#[test]
fn a_fresh_start_is_refused_once_retention_removed_history() {
    for (first, refused) in [
        (None, false),
        (Some(1), false),
        (Some(2), true),
        (Some(9), true),
    ] {
        assert_eq!(fresh_start("/out", first).is_err(), refused, "{first:?}");
    }
}

#[test]
fn refusals_name_what_changed_and_what_to_do() {
    let e = Refusal::InputChanged {
        reference: false,
        epoch: 60_000,
        root: "/out".into(),
        partition: 1,
        was: "file:b".into(),
        now: None,
    };
    assert_eq!(
        e.to_string(),
        "the inputs changed since epoch 60000 was committed to /out: partition 1 was file:b, now missing; \
         resume with the same inputs (the same files, or the same topics in the same order), or write to a new output root"
    );
    let e = Refusal::ConfigChanged {
        epoch: 60_000,
        root: "/out".into(),
        changes: vec!["a: 1 → 2".into(), "b: added".into()],
    };
    assert!(
        e.to_string()
            .contains("committed to /out: a: 1 → 2; b: added. Restore with the same configuration"),
        "{e}"
    );
}

use std::time::Duration;

use super::*;

#[test]
fn defaults_match_spec() {
    let p = Config::parse("").unwrap().params().unwrap();
    assert_eq!(p, Params::default());
}

#[test]
fn errors_name_the_field() {
    let e = format!("{:#}", Config::parse("[job]\noutptu = 'x'\n").unwrap_err());
    assert!(e.contains("outptu"), "{e}");
    let e = format!("{:#}", Config::parse("[time]\ntick = '7s'\n").unwrap_err());
    assert!(
        e.contains("windows[0]") && e.contains("multiple of time.tick"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        Config::parse("[dedup]\nhorizon = '10 minutes'\n").unwrap_err()
    );
    assert!(e.contains("dedup.horizon"), "{e}");
    for (text, needle) in [
        (
            "[kinesis]\nendpoint = 'localhost:4567'\n",
            "kinesis.endpoint",
        ),
        ("[kinesis]\nstart = 'yesterday'\n", "kinesis.start"),
        ("[kinesis]\nend = 'soon'\n", "kinesis.end"),
        ("[kinesis]\nshards = 4\n", "shards"),
        ("[source]\nkind = 'kinesis'\n", "kinesis.stream"),
    ] {
        let e = format!("{:#}", Config::parse(text).unwrap_err());
        assert!(e.contains(needle), "{text}: {e}");
    }
    assert_eq!(duration_ms("x", "1500ms").unwrap(), 1500);
    assert_eq!(duration_ms("x", "2h").unwrap(), 7_200_000);
}

fn error_of(text: &str) -> String {
    format!("{:#}", Config::parse(text).unwrap_err())
}

#[test]
fn metrics_port_takes_an_integer_a_string_a_range_or_off() {
    for (text, want) in [
        ("port = 9464", MetricsPort::Range(9464, 9464)),
        ("port = \"9464\"", MetricsPort::Range(9464, 9464)),
        ("port = \"9464-9563\"", MetricsPort::Range(9464, 9563)),
        ("port = \"off\"", MetricsPort::Off),
    ] {
        let cfg = Config::parse(&format!("[metrics]\n{text}\n")).unwrap();
        assert_eq!(cfg.metrics.port, want, "{text}");
    }
    assert_eq!(
        Config::parse("").unwrap().metrics.port,
        MetricsPort::Range(9464, 9563)
    );
    for bad in [
        "port = 70000",
        "port = -1",
        "port = \"x\"",
        "port = \"9600-9500\"",
    ] {
        let e = error_of(&format!("[metrics]\n{bad}\n"));
        assert!(e.contains("metrics.port"), "{bad}: {e}");
    }
}

#[test]
fn a_bad_kind_names_the_field_and_the_allowed_values() {
    let e = error_of("[source]\nkind = \"kafkaa\"\n");
    for needle in ["source.kind", "generator", "files", "kafka", "kinesis"] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let e = error_of("[reference]\nkind = \"csv\"\n");
    for needle in ["reference.kind", "none", "generator", "files", "kafka"] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let w =
        "[[windows]]\nname = \"a\"\nkind = \"tumbling\"\nsize = \"1m\"\ngroup_by = [\"status\"]\n";
    let e = error_of(&format!(
        "{w}[[windows]]\nname = \"b\"\nkind = \"hopping\"\ngroup_by = [\"status\"]\n"
    ));
    for needle in ["windows[1].kind", "tumbling", "sliding", "session"] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let e = error_of(&format!("{w}aggregates = [\"count\", \"median\"]\n"));
    assert!(
        e.contains("windows[0].aggregates") && e.contains("avg"),
        "{e}"
    );
    let e = error_of("[anomaly.window]\nmetrics = [\"txn_total\"]\n");
    assert!(
        e.contains("anomaly.window.metrics") && e.contains("sum_cents"),
        "{e}"
    );
}

#[test]
fn a_bad_duration_names_the_field() {
    let e = error_of("[time]\nidle_timeout = \"30x\"\n");
    assert!(
        e.contains("time.idle_timeout = \"30x\"") && e.contains("\"30s\""),
        "{e}"
    );
    for (text, needle) in [
        ("[checkpoint]\ninterval = 10\n", "checkpoint.interval"),
        ("[checkpoint]\nmin_wall_interval = \"2\"\n", "checkpoint.min_wall_interval"),
        ("[checkpoint]\ngive_up_after = \"0s\"\n", "checkpoint.give_up_after"),
        ("[checkpoint]\ngive_up_after = \"soon\"\n", "checkpoint.give_up_after"),
        ("[checkpoint]\ngive_up_after = 600\n", "checkpoint.give_up_after"),
        ("[checkpoint]\nmax_pending_epochs = 0\n", "checkpoint.max_pending_epochs = 0"),
        ("[checkpoint]\nmax_pending_epochs = -1\n", "checkpoint.max_pending_epochs = -1 would pause the sources for good; use 1 or more"),
        ("[checkpoint]\nmax_pending_epochs = \"3\"\n", "checkpoint.max_pending_epochs"),
        ("[checkpoint]\nmax_pending_bytes = 0\n", "checkpoint.max_pending_bytes = 0"),
        ("[checkpoint]\nmax_pending_bytes = \"0MiB\"\n", "checkpoint.max_pending_bytes = 0"),
        ("[checkpoint]\nmax_pending_bytes = -5\n", "checkpoint.max_pending_bytes"),
        ("[checkpoint]\nmax_pending_bytes = \"256 megs\"\n", "checkpoint.max_pending_bytes = \"256 megs\" has an unknown unit"),
        ("[checkpoint]\nmax_pending_bytes = \"lots\"\n", "checkpoint.max_pending_bytes = \"lots\" is not a size"),
        ("[checkpoint]\nmax_pending_bytes = \"99999999TiB\"\n", "checkpoint.max_pending_bytes = \"99999999TiB\" is too large"),
        ("[job]\nstop_timeout = \"0s\"\n", "job.stop_timeout must be greater than zero"),
        ("[anomaly.window]\ncooldown = \"soon\"\n", "anomaly.window.cooldown"),
        (
            "[[windows]]\nname = \"a\"\nkind = \"tumbling\"\nsize = \"1 minute\"\ngroup_by = [\"status\"]\n",
            "windows[0].size",
        ),
    ] {
        let e = error_of(text);
        assert!(e.contains(needle), "{text}: {e}");
    }
    let cfg = Config::parse("[time]\nidle_timeout = \"90s\"\n[metrics]\nlinger = \"0\"\n").unwrap();
    assert_eq!(cfg.time.idle_timeout, Dur(90_000));
    assert_eq!(cfg.params().unwrap().idle_timeout_ms, 90_000);
    assert!(cfg.metrics.linger.duration().is_zero());
}

#[test]
fn give_up_after_is_never_by_default_or_a_positive_duration() {
    let cfg = Config::parse("").unwrap();
    assert_eq!(cfg.checkpoint.give_up_after.duration(), None);
    let cfg = Config::parse("[checkpoint]\ngive_up_after = \"never\"\n").unwrap();
    assert_eq!(cfg.checkpoint.give_up_after.duration(), None);
    let cfg = Config::parse("[checkpoint]\ngive_up_after = \"10m\"\n").unwrap();
    assert_eq!(
        cfg.checkpoint.give_up_after.duration(),
        Some(Duration::from_secs(600))
    );
    let e = error_of("[checkpoint]\ngive_up_after = \"0\"\n");
    assert!(
        e.contains("checkpoint.give_up_after") && e.contains("never"),
        "{e}"
    );
}

#[test]
fn back_pressure_bounds_default_and_parse_human_sizes() {
    let c = Config::parse("").unwrap().checkpoint;
    assert_eq!(c.max_pending_epochs, 3);
    assert_eq!(c.max_pending_bytes, ByteSize(256 << 20));
    for (text, want) in [
        ("\"256MiB\"", 256 << 20),
        ("\"1GiB\"", 1 << 30),
        ("\"512KiB\"", 512 << 10),
        ("\"64KB\"", 64_000),
        ("\"2 MB\"", 2_000_000),
        ("\"4096B\"", 4096),
        ("\"4096\"", 4096),
        ("1048576", 1 << 20),
    ] {
        let cfg = Config::parse(&format!(
            "[checkpoint]\nmax_pending_bytes = {text}\nmax_pending_epochs = 7\n"
        ))
        .unwrap();
        assert_eq!(cfg.checkpoint.max_pending_bytes, ByteSize(want), "{text}");
        assert_eq!(cfg.checkpoint.max_pending_epochs, 7);
    }
}

#[test]
fn the_shipped_cluster_toml_loads_for_run_and_replay() {
    let text = include_str!("../../cluster.toml");
    // run: the generator with its merchants table.
    let cfg = Config::parse(text).unwrap();
    assert_eq!(cfg.source.kind, SourceKind::Generator);
    assert_eq!(cfg.reference.kind, ReferenceKind::Generator);
    let p = cfg.params().unwrap();
    assert_eq!(p.windows.len(), 4);
    assert_eq!(cfg.metrics.port, MetricsPort::Range(9464, 9563));
    // replay: the generator-only reference is left out, with a note.
    let mut cfg = Config::parse(text).unwrap();
    let note = cfg.for_replay().expect("a note on what was left out");
    assert!(
        note.contains("reference.kind") && note.contains("--reference"),
        "{note}"
    );
    assert_eq!(cfg.reference.kind, ReferenceKind::None);
    assert!(cfg.reference_dropped());
    assert_eq!(cfg.params().unwrap(), p);
    // Nothing else to leave out.
    assert_eq!(cfg.for_replay(), None);
}

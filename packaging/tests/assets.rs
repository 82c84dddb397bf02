//! The monitoring files the package ships refer only to metrics the services export: the Grafana
//! dashboard (`packaging/grafana/kick-monitor.json`) and the Prometheus alerting rules
//! (`packaging/prometheus/kick-monitor.rules.yml`; `promtool test rules` checks their logic).
//! The exported names come from rendering the services' own metric sets, so a renamed metric
//! fails here instead of leaving an empty panel or an alert that can never fire.

use std::collections::BTreeSet;
use std::path::Path;

use kick_shared::metrics::Render as _;

/// Metrics the dashboard and the alerts already use but the services do not export yet. Remove
/// each name as it lands: the test fails while a listed name is exported, so the list only
/// shrinks. (Empty: everything used is exported.)
const PLANNED: &[&str] = &[];

/// PromQL words that look like metric names but are not: aggregations and keywords.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Every series name the services expose: `# TYPE` lines of the rendered metric sets, plus the
/// `_bucket`, `_sum` and `_count` series of each histogram.
fn exported() -> BTreeSet<String> {
    let text = kick_collector::metrics::CollectorMetrics::default().render()
        + &kick_writer::metrics::WriterMetrics::default().render()
        + &kick_collector::webhooks::WebhookMetrics::default().render();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name.to_owned());
    }
    assert!(
        names.contains("kick_collector_sockets_up") && names.contains("kick_writer_queue_depth"),
        "rendering found no metrics: {text}"
    );
    names
}

/// The metric names a PromQL expression selects. Strings, label matchers (`{…}`), ranges
/// (`[…]`), function calls, aggregations, keywords and the label lists of `by (…)` and friends
/// are skipped; what is left are bare identifiers, which in PromQL are metric names.
fn metric_names(expr: &str) -> Vec<String> {
    // Blank out strings, matchers and ranges, so only the expression's skeleton is left.
    let mut skeleton = String::new();
    let mut closing: Option<char> = None;
    let mut quote: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if let Some(close) = closing {
            if c == close {
                closing = None;
            } else if c == '"' || c == '\'' {
                quote = Some(c);
            }
            skeleton.push(' ');
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => closing = Some('}'),
            '[' => closing = Some(']'),
            _ => {}
        }
        skeleton.push(if closing.is_some() || quote.is_some() {
            ' '
        } else {
            c
        });
    }
    let chars: Vec<char> = skeleton.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let mut skip_parens_after_keyword = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let lower = word.to_ascii_lowercase();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&lower.as_str())
            {
                skip_parens_after_keyword = true;
            } else if KEYWORDS.contains(&lower.as_str()) || next == Some(&'(') {
                // An aggregation, keyword or function call.
            } else {
                names.push(word);
            }
            continue;
        }
        if c == '(' && skip_parens_after_keyword {
            // A label list: skip to its closing parenthesis.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_parens_after_keyword = false;
        } else if c.is_ascii_digit() || c == '.' {
            // A number (or a duration like 5m after `offset`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names
}

fn check_names(what: &str, expr: &str, known: &BTreeSet<String>, used: &mut BTreeSet<String>) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: no metric in `{expr}`");
    for name in names {
        assert!(
            known.contains(&name) || PLANNED.contains(&name.as_str()),
            "{what}: `{name}` in `{expr}` is neither exported by the services nor in PLANNED"
        );
        used.insert(name);
    }
}

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn the_parser_finds_metric_names_only() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, job) (rate(kick_writer_latency_seconds_bucket{instance=~"$instance", le!="+Inf"}[$__rate_interval])))"#
        ),
        ["kick_writer_latency_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "time() - kick_a offset 5m > 120 and on (instance) kick_b == bool 1 or vector(0)"
        ),
        ["kick_a", "kick_b"]
    );
}

#[test]
fn planned_names_are_not_exported_yet() {
    let known = exported();
    for name in PLANNED {
        assert!(
            !known.contains(*name),
            "{name} is exported now: remove it from PLANNED"
        );
    }
}

#[test]
fn dashboard_panels_use_exported_metrics() {
    let known = exported();
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("packaging/grafana/kick-monitor.json"))
            .expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"], "kick-monitor");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut used = BTreeSet::new();
    let mut n_queries = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no queries");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title}: a target without expr"));
            check_names(&format!("panel {title}"), expr, &known, &mut used);
            n_queries += 1;
        }
    }
    assert!(n_queries >= 20, "only {n_queries} queries");
    // Every exported metric of consequence is on the dashboard somewhere.
    for name in [
        "kick_collector_sockets_up",
        "kick_collector_subscriptions",
        "kick_collector_channels_covered",
        "kick_collector_rows_staged_total",
        "kick_collector_stage_latency_seconds_bucket",
        "kick_writer_queue_depth",
        "kick_writer_oldest_pending_seconds",
        "kick_writer_latency_seconds_bucket",
    ] {
        assert!(used.contains(name), "{name} is on no panel");
    }
}

#[test]
fn alert_rules_use_exported_metrics() {
    let known = exported();
    let rules = repo_file("packaging/prometheus/kick-monitor.rules.yml");
    // `expr:` values, on one line or as a folded block (`expr: >` then more-indented lines).
    let lines: Vec<&str> = rules.lines().collect();
    let mut used = BTreeSet::new();
    let mut n_rules = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let expr = if value.trim() == ">" || value.trim() == "|" {
            lines[i + 1..]
                .iter()
                .take_while(|l| l.len() - l.trim_start().len() > indent && !l.trim().is_empty())
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            value.trim().to_owned()
        };
        check_names(&format!("rule at line {}", i + 1), &expr, &known, &mut used);
        n_rules += 1;
    }
    assert!(n_rules >= 10, "only {n_rules} rules found");
}

//! The provisioned Grafana dashboards (`dashboards/*.json`) as the tests
//! read them: every panel's query, and the ClickHouse plugin's macros
//! replaced as Grafana would for a time range, so the SQL can run against
//! a real ClickHouse.

use std::path::Path;

use serde_json::Value;

/// One query of a dashboard: a panel's target or a template variable.
#[derive(Debug, Clone)]
pub struct Query {
    pub dashboard: String,
    pub title: String,
    /// `grafana-clickhouse-datasource` or `prometheus`.
    pub datasource: String,
    /// SQL for ClickHouse, PromQL for Prometheus.
    pub text: String,
}

/// Every query of every dashboard in `dir`.
pub fn queries(dir: &Path) -> Vec<Query> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let dash: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
        let name = dash["title"].as_str().unwrap_or_default().to_string();
        let kind = |v: &Value| v["type"].as_str().unwrap_or_default().to_string();
        for panel in dash["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let text = target["rawSql"]
                    .as_str()
                    .or_else(|| target["expr"].as_str())
                    .unwrap_or_else(|| panic!("{name}: a target without a query"));
                out.push(Query {
                    dashboard: name.clone(),
                    title: panel["title"].as_str().unwrap_or_default().to_string(),
                    datasource: kind(&target["datasource"]),
                    text: text.to_string(),
                });
            }
        }
        for var in dash["templating"]["list"].as_array().into_iter().flatten() {
            if var["type"] == "query" {
                out.push(Query {
                    dashboard: name.clone(),
                    title: format!("variable {}", var["name"].as_str().unwrap_or_default()),
                    datasource: kind(&var["datasource"]),
                    text: var["query"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
    }
    out
}

/// `sql` with the plugin's macros for `[from_s, to_s]` and the dashboard
/// variables `vars` (name, value) replaced.
pub fn render(sql: &str, from_s: i64, to_s: i64, vars: &[(&str, &str)]) -> String {
    let mut sql = sql.to_string();
    while let Some(at) = sql.find("$__timeFilter(") {
        let open = at + "$__timeFilter(".len();
        let close = open + sql[open..].find(')').expect("a closing parenthesis");
        let column = sql[open..close].trim().to_string();
        sql.replace_range(
            at..=close,
            &format!("{column} >= toDateTime({from_s}) AND {column} <= toDateTime({to_s})"),
        );
    }
    sql = sql
        .replace("$__fromTime", &format!("toDateTime({from_s})"))
        .replace("$__toTime", &format!("toDateTime({to_s})"));
    for (name, value) in vars {
        sql = sql
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(
        !sql.contains('$'),
        "an unreplaced macro or variable in {sql}"
    );
    sql
}

#[cfg(test)]
mod tests {
    #[test]
    fn macros_and_variables_are_replaced() {
        let sql = super::render(
            "SELECT 1 FROM ${database}.t WHERE d = '${device}' AND $__timeFilter(hour) AND x < $__toTime",
            10,
            20,
            &[("database", "db"), ("device", "t-1")],
        );
        assert_eq!(
            sql,
            "SELECT 1 FROM db.t WHERE d = 't-1' AND hour >= toDateTime(10) AND hour <= toDateTime(20) AND x < toDateTime(20)"
        );
    }
}

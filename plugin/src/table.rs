//! `get`'s output: one row per source, columns aligned as kubectl and flux print them.

use externalsource_core::controller::api::ExternalSource;
use jiff::Timestamp;

/// The columns `get` prints, `NAMESPACE` only across namespaces.
pub fn render(sources: &[ExternalSource], with_namespace: bool, now: Timestamp) -> String {
    let mut rows =
        vec![["NAMESPACE", "NAME", "READY", "REVISION", "SUSPENDED", "AGE", "MESSAGE"].map(str::to_owned).to_vec()];
    for es in sources {
        let ready = crate::status::ready(es);
        rows.push(vec![
            es.metadata.namespace.clone().unwrap_or_default(),
            es.metadata.name.clone().unwrap_or_default(),
            ready.map_or("Unknown", |c| c.status.as_str()).to_owned(),
            crate::status::revision(es).unwrap_or_default().to_owned(),
            es.spec.suspend.unwrap_or(false).to_string(),
            es.metadata.creation_timestamp.as_ref().map(|t| age(now, t.0)).unwrap_or_else(|| "<unknown>".into()),
            ready.map(|c| c.message.replace('\n', " ")).unwrap_or_default(),
        ]);
    }
    if !with_namespace {
        for row in &mut rows {
            row.remove(0);
        }
    }
    let columns = rows[0].len();
    let widths: Vec<usize> =
        (0..columns).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long ago `then` was, in kubectl's format (`45s`, `3m20s`, `5h`, `3d4h`, `2y`).
pub fn age(now: Timestamp, then: Timestamp) -> String {
    let seconds = now.as_second() - then.as_second();
    if seconds < -1 {
        return "<invalid>".into();
    }
    let seconds = seconds.max(0);
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    let days = hours / 24;
    let with = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 { format!("{big}{unit}") } else { format!("{big}{unit}{small}{small_unit}") }
    };
    match () {
        _ if seconds < 120 => format!("{seconds}s"),
        _ if minutes < 10 => with(minutes, "m", seconds % 60, "s"),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => with(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => with(days, "d", hours % 24, "h"),
        _ if days < 365 * 2 => format!("{days}d"),
        _ if days < 365 * 8 => with(days / 365, "y", days % 365, "d"),
        _ => format!("{}y", days / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_as_kubectl_prints_them() {
        let now = Timestamp::from_second(1_000_000_000).unwrap();
        let ago = |s: i64| age(now, Timestamp::from_second(1_000_000_000 - s).unwrap());
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (200, "3m20s"),
            (240, "4m"),
            (3000, "50m"),
            (4 * 3600 + 120, "4h2m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (40 * 86400, "40d"),
            (3 * 365 * 86400 + 5 * 86400, "3y5d"),
            (10 * 365 * 86400, "10y"),
        ];
        for (seconds, want) in cases {
            assert_eq!(ago(seconds), want, "{seconds}s ago");
        }
        assert_eq!(ago(-5), "<invalid>", "a clock ahead of ours");
    }

    #[test]
    fn columns_are_aligned_and_the_namespace_only_shown_across_namespaces() {
        let es: ExternalSource = serde_json::from_value(serde_json::json!({
            "apiVersion": "source.flux.oddkin.co/v1alpha1", "kind": "ExternalSource",
            "metadata": {"name": "prices", "namespace": "team-a", "creationTimestamp": "2001-09-09T01:46:40Z"},
            "spec": {"interval": "1h", "generator": {"type": "http", "http": {"url": "http://x"}}},
            "status": {"artifact": {"url": "u", "revision": "rev-1", "lastUpdateTime": "2001-09-09T01:46:40Z"},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                                       "message": "stored artifact", "lastTransitionTime": "2001-09-09T01:46:40Z"}]},
        }))
        .unwrap();
        let now = Timestamp::from_second(1_000_000_000 + 3600).unwrap();
        let text = render(std::slice::from_ref(&es), false, now);
        assert_eq!(
            text,
            "NAME     READY   REVISION   SUSPENDED   AGE   MESSAGE\nprices   True    rev-1      false       60m   stored artifact\n"
        );
        assert!(render(&[es], true, now).starts_with("NAMESPACE   NAME "));
    }
}

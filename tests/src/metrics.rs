//! Reading a Prometheus text exposition in tests.

/// Sum of every sample of `name` whose labels include all of `labels` (`k="v"` pairs).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbl) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            if !labels
                .iter()
                .all(|(k, v)| lbl.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

pub async fn scrape(url: &str) -> String {
    let c = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    c.get(url).send().await.unwrap().text().await.unwrap()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_matching_series() {
        let t = "# HELP x\nx_total{type=\"a\",b=\"c\"} 2\nx_total{type=\"b\"} 3\nx_total 1\ny 9\n";
        assert_eq!(super::sum(t, "x_total", &[]), 6.0);
        assert_eq!(super::sum(t, "x_total", &[("type", "a")]), 2.0);
        assert_eq!(super::sum(t, "y", &[]), 9.0);
        assert_eq!(super::sum(t, "z", &[]), 0.0);
    }
}

//! The JSON a render reports, one serde type per record: the lines of `--json-log` (written
//! by `nst render`, read back by `nst plot`) and the web view's events, which are the same
//! iteration record with the view's fields added. The schema is documented once, in
//! docs/web.md ("The JSON records").

use serde::{Deserialize, Serialize};

/// The loss terms of an iteration, in the objective's order, each `null` when not finite.
/// Written as fields of the record that holds them (`"content/relu4_2": 1.5e5, …`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Terms(pub(crate) Vec<(String, Option<f64>)>);

impl Terms {
    pub(crate) fn from_values(terms: &[(String, f64)]) -> Self {
        Terms(terms.iter().map(|(k, v)| (k.clone(), finite(*v))).collect())
    }
}

impl Serialize for Terms {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Terms {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Terms;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("loss terms: names with numbers or null")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Terms, A::Error> {
                let mut terms = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Option<f64>>()? {
                    terms.push((k, v));
                }
                Ok(Terms(terms))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// `Some(v)` when `v` is finite (JSON has no infinities or NaN).
pub(crate) fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// One iteration: a line of the log, and the core of a web view event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Iteration {
    /// The scale (0-based).
    pub(crate) scale: usize,
    /// The image's size at this scale.
    pub(crate) width: usize,
    pub(crate) height: usize,
    /// The iteration within its scale (1-based).
    pub(crate) iteration: usize,
    /// Seconds since the render started (a resumed render counts its earlier runs).
    pub(crate) elapsed_s: f64,
    /// The process's peak resident memory so far, in MB of 10⁶ bytes.
    #[serde(default)]
    pub(crate) peak_rss_mb: Option<f64>,
    /// The objective at the start of the iteration.
    pub(crate) total: Option<f64>,
    /// The scale ended here, its loss having stopped falling (`--tolerance`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) converged: bool,
    /// Every loss term, by name.
    #[serde(flatten)]
    pub(crate) terms: Terms,
}

impl Iteration {
    pub(crate) fn new(p: &nst_style::Progress) -> Self {
        Iteration {
            scale: p.scale.0,
            width: p.size.0,
            height: p.size.1,
            iteration: p.iteration.0,
            elapsed_s: p.elapsed.as_secs_f64(),
            peak_rss_mb: crate::system::peak_rss().map(|b| b as f64 / 1e6),
            total: finite(p.total),
            converged: p.converged,
            terms: Terms::from_values(&p.terms),
        }
    }
}

/// What `nst eval` prints: the objective and its terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Evaluation {
    pub(crate) total: Option<f64>,
    #[serde(flatten)]
    pub(crate) terms: Terms,
}

/// What `nst estimate --json` prints: the plan of every scale and the budget it meets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Estimate {
    pub(crate) peak_bytes: u64,
    pub(crate) budget_bytes: u64,
    pub(crate) budget_source: String,
    /// `host` or `device`.
    pub(crate) memory: &'static str,
    /// The predicted time of the whole render.
    pub(crate) seconds: f64,
    pub(crate) scales: Vec<EstimateScale>,
}

/// One scale of [`Estimate`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct EstimateScale {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) iterations: usize,
    pub(crate) tiles: usize,
    pub(crate) tile: usize,
    pub(crate) halo: usize,
    pub(crate) kept: usize,
    pub(crate) history: usize,
    pub(crate) peak_bytes: u64,
    pub(crate) work: f64,
    pub(crate) seconds_per_iteration: f64,
}

/// A scale begins: the log's `"event": "scale"` line, with its memory plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Scale {
    pub(crate) event: Event,
    pub(crate) scale: usize,
    pub(crate) width: usize,
    pub(crate) height: usize,
    /// `Untiled`, `Tiled(..)` or `Shallow(..)`, as the plan names it.
    pub(crate) tiling: String,
    pub(crate) lbfgs_history: usize,
    pub(crate) predicted_peak_mb: f64,
    pub(crate) peak_rss_mb: Option<f64>,
}

/// What a line that is not an iteration announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Event {
    /// The first line: the settings and the device.
    Start,
    /// A scale begins.
    Scale,
}

/// Where a render stands, in a web view event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Before the first iteration.
    Starting,
    Running,
    Done,
    Stopped,
}

/// A web view event (`/events`, `/progress`, `/history`): the state and the latest preview's
/// version, and while running the iteration record with the view's own fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct WebEvent {
    pub(crate) state: State,
    /// The preview's version (`/image.png?v=…`).
    pub(crate) image: u64,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub(crate) running: Option<Running>,
}

/// The part of a web view event that only a running render has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Running {
    /// Iterations done, counted across scales.
    pub(crate) step: usize,
    /// Iterations in this scale.
    pub(crate) iterations: usize,
    /// Scales in the render.
    pub(crate) scales: usize,
    pub(crate) eta_s: f64,
    pub(crate) it_per_s: f64,
    #[serde(flatten)]
    pub(crate) record: Iteration,
}

impl WebEvent {
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record always serialises")
    }
}

/// A line of the log as `nst plot` reads it: an iteration, or an event it passes over.
pub(crate) enum Line {
    Iteration(Iteration),
    Event,
}

/// Parses one line of a `--json-log` file.
pub(crate) fn parse_line(line: &str) -> Result<Line, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| "is not JSON".to_string())?;
    let Some(obj) = v.as_object() else {
        return Err("is not a JSON object".into());
    };
    if obj.contains_key("event") {
        return Ok(Line::Event);
    }
    serde_json::from_value(v)
        .map(Line::Iteration)
        .map_err(|e| format!("is not an nst iteration record ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Iteration {
        Iteration {
            scale: 1,
            width: 96,
            height: 64,
            iteration: 3,
            elapsed_s: 1.25,
            peak_rss_mb: Some(120.5),
            total: Some(2.5e5),
            converged: false,
            terms: Terms(vec![
                ("content/relu4_2".into(), Some(1.5e5)),
                ("style/relu1_1".into(), Some(1e5)),
                ("tv".into(), None),
            ]),
        }
    }

    #[test]
    fn an_iteration_is_a_flat_line_that_reads_back_with_its_terms_in_order() {
        let r = record();
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            "{\"scale\":1,\"width\":96,\"height\":64,\"iteration\":3,\"elapsed_s\":1.25,\"peak_rss_mb\":120.5,\"total\":250000.0,\"content/relu4_2\":150000.0,\"style/relu1_1\":100000.0,\"tv\":null}"
        );
        match parse_line(&line).unwrap() {
            Line::Iteration(back) => assert_eq!(back, r),
            Line::Event => panic!("an iteration read as an event"),
        }
        let converged = Iteration {
            converged: true,
            ..r
        };
        let line = serde_json::to_string(&converged).unwrap();
        assert!(line.contains("\"converged\":true"), "{line}");
        assert!(matches!(parse_line(&line), Ok(Line::Iteration(i)) if i.converged));
    }

    #[test]
    fn events_and_other_lines() {
        assert!(matches!(
            parse_line("{\"event\":\"start\",\"seed\":1}"),
            Ok(Line::Event)
        ));
        assert_eq!(parse_line("[1]").err().unwrap(), "is not a JSON object");
        assert_eq!(parse_line("nope").err().unwrap(), "is not JSON");
        let e = parse_line("{\"iteration\":1}").err().unwrap();
        assert!(e.starts_with("is not an nst iteration record"), "{e}");
    }

    #[test]
    fn a_web_event_is_the_record_with_the_views_fields() {
        let running = WebEvent {
            state: State::Running,
            image: 4,
            running: Some(Running {
                step: 13,
                iterations: 20,
                scales: 2,
                eta_s: 3.5,
                it_per_s: 2.0,
                record: record(),
            }),
        };
        let json = running.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["state"], "running");
        assert_eq!(v["step"], 13);
        assert_eq!(v["iteration"], 3);
        assert_eq!(v["style/relu1_1"], 1e5);
        assert_eq!(serde_json::from_str::<WebEvent>(&json).unwrap(), running);
        let done = WebEvent {
            state: State::Done,
            image: 9,
            running: None,
        };
        assert_eq!(done.to_json(), "{\"state\":\"done\",\"image\":9}");
    }
}

//! Sync data the worker keeps per session and participant (persisted with the session).

use serde::{Deserialize, Serialize};

/// A playback report as the worker keeps it, stamped by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Position (ms) the client reported.
    pub position: f64,
    pub is_playing: bool,
    /// Server clock (ms) when the gateway received it.
    pub received_at: i64,
    /// Best recent round-trip time of the reporting connection (ms).
    pub rtt_ms: f64,
    /// Playback rate the client runs at (1.0 unless told otherwise).
    #[serde(default = "one")]
    pub rate: f64,
}

fn one() -> f64 {
    1.0
}

impl Report {
    /// A report as the gateway stamped it: receive time and the connection's best RTT.
    pub fn stamped(cmd: &super::Command, position: f64, is_playing: bool, rate: f64) -> Self {
        Self {
            position,
            is_playing,
            received_at: cmd.received_at,
            rtt_ms: cmd.rtt_ms.unwrap_or(0.0),
            rate,
        }
    }
}

/// What the server remembers about correcting one participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CorrectionState {
    /// The rate last commanded (1.0 when none).
    #[serde(default = "one")]
    pub rate: f64,
    #[serde(default)]
    pub rate_active: bool,
    #[serde(default)]
    pub last_seek_at: Option<i64>,
    #[serde(default)]
    pub failed_seeks: u32,
    #[serde(default)]
    pub lagging: bool,
}

impl Default for CorrectionState {
    fn default() -> Self {
        Self {
            rate: 1.0,
            rate_active: false,
            last_seek_at: None,
            failed_seeks: 0,
            lagging: false,
        }
    }
}

impl CorrectionState {
    pub fn new() -> Self {
        Self::default()
    }
}

/// The host's playback as last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Playback {
    pub track_uri: String,
    pub report: Report,
}

/// A participant's own playback as last reported, and the connection that reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantPlayback {
    pub track_uri: String,
    pub report: Report,
    pub conn: String,
}

/// A track in the queue or playing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Track {
    pub id: String,
    pub uri: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub artist: String,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub added_by: String,
}

/// A track as a client describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackInput {
    pub uri: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub artist: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub rate: bool,
}

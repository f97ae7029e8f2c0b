//! The tunnel's own series: its counters, copied to the metrics recorder.

/// A series: its name, its labels beside `role`, its value.
type Series = (&'static str, &'static [(&'static str, &'static str)], u64);

fn with_role(role: &'static str, labels: &[(&'static str, &'static str)]) -> Vec<metrics::Label> {
    let mut all = vec![metrics::Label::new("role", role)];
    all.extend(labels.iter().map(|&(k, v)| metrics::Label::new(k, v)));
    all
}

fn counters(role: &'static str, series: &[Series]) {
    for &(name, labels, v) in series {
        metrics::counter!(name, with_role(role, labels)).absolute(v);
    }
}

fn gauges(role: &'static str, series: &[Series]) {
    for &(name, labels, v) in series {
        metrics::gauge!(name, with_role(role, labels)).set(v as f64);
    }
}

/// Copies the server side's counters to the recorder (series `tunnel_*{role="server"}`;
/// TUNNEL.md's deployment section lists them).
pub fn record_server(s: &crate::stats::ServerSnapshot, control_up: bool) {
    const EVENT: &str = "event";
    const REASON: &str = "reason";
    counters(
        "server",
        &[
            ("tunnel_users_total", &[], s.users),
            (
                "tunnel_users_refused_total",
                &[(REASON, "full")],
                s.users_refused,
            ),
            (
                "tunnel_users_refused_total",
                &[(REASON, "source")],
                s.users_refused_source,
            ),
            ("tunnel_sessions_total", &[], s.sessions),
            (
                "tunnel_sessions_ended_total",
                &[("outcome", "relayed")],
                s.relayed,
            ),
            (
                "tunnel_sessions_ended_total",
                &[("outcome", "failed")],
                s.failed,
            ),
            (
                "tunnel_sessions_ended_total",
                &[("outcome", "evicted")],
                s.users_evicted,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "idle_closed")],
                s.idle_closed,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "half_close_timeout")],
                s.half_close_timeouts,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "orphaned")],
                s.orphaned,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "not_taken")],
                s.not_taken,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "dead_picked")],
                s.dead_picked,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "replayed")],
                s.replayed,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "target_failed")],
                s.target_failed,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "no_service")],
                s.no_service,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "wrong_kind")],
                s.wrong_kind,
            ),
            (
                "tunnel_session_events_total",
                &[(EVENT, "no_outcome")],
                s.no_outcome,
            ),
            (
                "tunnel_bytes_total",
                &[("direction", "to_target")],
                s.bytes_up,
            ),
            (
                "tunnel_bytes_total",
                &[("direction", "to_user")],
                s.bytes_down,
            ),
            ("tunnel_control_connections_total", &[], s.control_ok),
            (
                "tunnel_control_refused_total",
                &[(REASON, "no_token")],
                s.control_no_token,
            ),
            (
                "tunnel_control_refused_total",
                &[(REASON, "bad_token")],
                s.control_bad_token,
            ),
            (
                "tunnel_control_refused_total",
                &[(REASON, "replayed")],
                s.control_replayed,
            ),
            (
                "tunnel_control_refused_total",
                &[(REASON, "handshake")],
                s.control_handshake_failed,
            ),
            (
                "tunnel_control_refused_total",
                &[(REASON, "client_ip")],
                s.control_ip_refused,
            ),
            (
                "tunnel_control_unprotected_total",
                &[(REASON, "skewed")],
                s.control_skewed,
            ),
            (
                "tunnel_control_unprotected_total",
                &[(REASON, "predated")],
                s.control_predated,
            ),
            ("tunnel_control_admitted_total", &[], s.control_admitted),
            ("tunnel_control_evicted_total", &[], s.control_evicted),
            ("tunnel_control_silent_total", &[], s.control_silent),
            ("tunnel_client_restarts_total", &[], s.client_restarts),
        ],
    );
    gauges(
        "server",
        &[
            ("tunnel_sessions_active", &[], s.sessions_active),
            ("tunnel_control_up", &[], u64::from(control_up)),
        ],
    );
}

/// Copies the client side's counters to the recorder (series `tunnel_*{role="client"}`).
pub fn record_client(s: &crate::stats::ClientSnapshot, control_up: bool) {
    let ended = s.relayed.saturating_add(s.failed);
    counters(
        "client",
        &[
            ("tunnel_sessions_total", &[], s.accepted),
            (
                "tunnel_sessions_ended_total",
                &[("outcome", "relayed")],
                s.relayed,
            ),
            (
                "tunnel_sessions_ended_total",
                &[("outcome", "failed")],
                s.failed,
            ),
            (
                "tunnel_session_events_total",
                &[("event", "target_failed")],
                s.target_failed,
            ),
            (
                "tunnel_session_events_total",
                &[("event", "no_service")],
                s.no_service,
            ),
            (
                "tunnel_session_events_total",
                &[("event", "wrong_kind")],
                s.wrong_kind,
            ),
            (
                "tunnel_session_events_total",
                &[("event", "bad_start")],
                s.bad_start,
            ),
            (
                "tunnel_bytes_total",
                &[("direction", "to_user")],
                s.bytes_up,
            ),
            (
                "tunnel_bytes_total",
                &[("direction", "to_target")],
                s.bytes_down,
            ),
            ("tunnel_control_connections_total", &[], s.control_ok),
            ("tunnel_control_failed_total", &[], s.control_failed),
            ("tunnel_control_silent_total", &[], s.control_silent),
        ],
    );
    gauges(
        "client",
        &[
            (
                "tunnel_sessions_active",
                &[],
                s.accepted.saturating_sub(ended),
            ),
            ("tunnel_control_up", &[], u64::from(control_up)),
        ],
    );
}

/// A series of one service: its name, its labels beside `role` and `service`, its
/// value.
type ServiceSeries = (&'static str, Option<(&'static str, &'static str)>, u64);

/// Copies each service's counters to the recorder: series `tunnel_service_*` (its TCP
/// sessions) and `tunnel_udp_*` (its UDP associations), labelled `role` and `service`
/// (TUNNEL.md's deployment section lists them). The server counts what only it sees
/// (users, refusals, evictions, the session events); both count sessions, bytes and
/// datagrams.
pub fn record_services(role: &'static str, services: &[crate::stats::ServiceFigures]) {
    let server = role == "server";
    for f in services {
        let (t, u) = (&f.sessions, &f.udp);
        let mut counted: Vec<ServiceSeries> = vec![
            ("tunnel_service_sessions_total", None, t.sessions),
            (
                "tunnel_service_sessions_ended_total",
                Some(("outcome", "relayed")),
                t.relayed,
            ),
            (
                "tunnel_service_sessions_ended_total",
                Some(("outcome", "failed")),
                t.failed,
            ),
            (
                "tunnel_service_bytes_total",
                Some(("direction", "to_target")),
                t.bytes_to_target,
            ),
            (
                "tunnel_service_bytes_total",
                Some(("direction", "to_user")),
                t.bytes_to_user,
            ),
            (
                "tunnel_service_session_events_total",
                Some(("event", "target_failed")),
                t.target_failed,
            ),
            (
                "tunnel_service_session_events_total",
                Some(("event", "wrong_kind")),
                t.wrong_kind,
            ),
            ("tunnel_udp_associations_total", None, u.associations),
            (
                "tunnel_udp_datagrams_total",
                Some(("direction", "to_target")),
                u.datagrams_up,
            ),
            (
                "tunnel_udp_datagrams_total",
                Some(("direction", "to_user")),
                u.datagrams_down,
            ),
            (
                "tunnel_udp_bytes_total",
                Some(("direction", "to_target")),
                u.bytes_up,
            ),
            (
                "tunnel_udp_bytes_total",
                Some(("direction", "to_user")),
                u.bytes_down,
            ),
            (
                "tunnel_udp_dropped_total",
                Some(("reason", "full")),
                u.dropped_full,
            ),
            (
                "tunnel_udp_dropped_total",
                Some(("reason", "too_long")),
                u.dropped_too_long,
            ),
            (
                "tunnel_udp_dropped_total",
                Some(("reason", "send_failed")),
                u.dropped_send_failed,
            ),
            (
                "tunnel_udp_events_total",
                Some(("event", "idle_closed")),
                u.idle_closed,
            ),
            (
                "tunnel_udp_events_total",
                Some(("event", "bad_frame")),
                u.bad_frames,
            ),
            (
                "tunnel_udp_events_total",
                Some(("event", "target_failed")),
                u.target_failed,
            ),
            (
                "tunnel_udp_events_total",
                Some(("event", "wrong_kind")),
                u.kind_refused,
            ),
        ];
        if server {
            counted.extend_from_slice(&[
                ("tunnel_service_users_total", None, t.users),
                (
                    "tunnel_service_refused_total",
                    Some(("reason", "full")),
                    t.users_refused,
                ),
                (
                    "tunnel_service_refused_total",
                    Some(("reason", "source")),
                    t.users_refused_source,
                ),
                (
                    "tunnel_service_sessions_ended_total",
                    Some(("outcome", "evicted")),
                    t.users_evicted,
                ),
                (
                    "tunnel_udp_refused_total",
                    Some(("reason", "full")),
                    u.refused,
                ),
                (
                    "tunnel_udp_refused_total",
                    Some(("reason", "source")),
                    u.refused_source,
                ),
                (
                    "tunnel_udp_events_total",
                    Some(("event", "evicted")),
                    u.evicted,
                ),
                (
                    "tunnel_udp_events_total",
                    Some(("event", "open_failed")),
                    u.open_failed,
                ),
                (
                    "tunnel_udp_events_total",
                    Some(("event", "replayed")),
                    u.replayed,
                ),
            ]);
            for (event, v) in [
                ("no_service", t.no_service),
                ("no_outcome", t.no_outcome),
                ("idle_closed", t.idle_closed),
                ("half_close_timeout", t.half_close_timeouts),
                ("not_taken", t.not_taken),
                ("orphaned", t.orphaned),
            ] {
                counted.push((
                    "tunnel_service_session_events_total",
                    Some(("event", event)),
                    v,
                ));
            }
        }
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut all = vec![
                metrics::Label::new("role", role),
                metrics::Label::new("service", f.name.clone()),
            ];
            all.extend(extra.map(|(k, v)| metrics::Label::new(k, v)));
            all
        };
        for (name, extra, v) in counted {
            metrics::counter!(name, labels(extra)).absolute(v);
        }
        let mut gauged: Vec<ServiceSeries> = vec![
            ("tunnel_service_sessions_active", None, t.sessions_active),
            ("tunnel_udp_associations_active", None, u.active),
        ];
        if server {
            gauged.push(("tunnel_udp_queued_bytes", None, u.queued));
        }
        for (name, extra, v) in gauged {
            metrics::gauge!(name, labels(extra)).set(v as f64);
        }
    }
}

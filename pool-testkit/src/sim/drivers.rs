//! The two drivers: each feeds its machine the events of the simulated network, and
//! drains the machine's outputs after every input (the crate docs' contract of
//! `pool-core`): probes to answer, connections to close, dials to start, answers to
//! deliver. The application (a server `get`, the id over a control channel, a client
//! `get(id)`) runs here too, as both pools' user.
//!
//! The liveness of a connection is whatever the network model says about its other end
//! (`Net::alive_at_client`, `Net::alive_at_server`): a get's [`Got::Check`] and the
//! sweep's [`Probe`](pool_core::Probe) batches are answered from it at once, since no
//! simulated time passes during a probe.

use std::time::Duration;

use pool_core::{Admission, ConnId, DialTicket, GetError, Got, IdReader, Stage};

use super::net::{Delivery, Ev, Handshake, Side};
use super::SimPair;

// ------------------------------------------------------------------------------------
// Gets over the liveness model

/// Follows a get's [`Got::Check`] answers with the model's verdicts until it is ready,
/// waits or fails. Dead candidates are counted in `evicted`.
fn follow_checks(
    mut got: Got<u64>,
    evicted: &mut u64,
    alive: impl Fn(u64) -> bool,
    mut check: impl FnMut(pool_core::Check<u64>, bool) -> Got<u64>,
) -> Got<u64> {
    loop {
        match got {
            Got::Check(mut c) => {
                let ok = alive(*c.conn_mut());
                if !ok {
                    *evicted += 1;
                }
                got = check(c, ok);
            }
            other => return other,
        }
    }
}

impl SimPair {
    /// Drains both machines' outputs after an input, then checks the round prediction.
    pub(super) fn pump(&mut self) {
        self.pump_server();
        self.pump_client();
        self.oracle.check(&mut self.net, &self.client);
    }

    // --------------------------------------------------------------------------------
    // The client driver

    fn pump_client(&mut self) {
        let now = self.net.now();
        while let Some(mut batch) = self.client.poll_probe(now) {
            let (net, evicted) = (&self.net, &mut self.stats.evicted_client);
            batch.check(|s| {
                let ok = net.alive_at_client(*s);
                *evicted += u64::from(!ok);
                ok
            });
            self.client.handle_probe(batch, now);
        }
        self.client_closes();
        while let Some(ticket) = self.client.poll_dial(now) {
            self.oracle
                .ticket(&mut self.net, &self.client, ticket.is_urgent());
            self.start_dial(ticket);
        }
        while let Some(a) = self.client.poll_answer() {
            let Some((id, serial)) = self.client_waiting.remove(&a.key) else {
                self.stats.double_handouts += 1;
                continue;
            };
            match a.result {
                Ok((got_id, got)) => self.finish_pair(id, serial, got_id, got),
                Err(e) => self.abandon_pair(serial, e),
            }
        }
    }

    /// Connections the client closed: its end is gone.
    fn client_closes(&mut self) {
        while let Some((_, serial)) = self.client.poll_close() {
            self.net.client_gone(serial);
            self.net.retire(serial);
        }
    }

    /// The client's refill timer (or a sweep, or a waiter's deadline) fired.
    pub(super) fn client_timeout(&mut self) {
        let starting = !self.client.is_closed() && self.oracle.round_due(self.net.elapsed());
        let before = self.client.status();
        self.client.handle_timeout(self.net.now());
        if starting {
            self.oracle.start_round(&mut self.net, &self.client, before);
        }
    }

    fn start_dial(&mut self, ticket: DialTicket) {
        self.stats.dials += 1;
        let deadline = ticket.handshake_deadline();
        let serial = self.net.open(ticket);
        self.net
            .at_instant(deadline, Ev::ClientHandshakeDeadline(serial));
        let lat = self.net.latency();
        if self.net.connect_refused() {
            self.stats.injected_connect_refused += 1;
            let back = self.net.latency();
            self.net
                .at(lat + back, Ev::ClientFail(serial, Stage::Connect));
            self.net.log(format_args!("dial {serial} refused"));
        } else {
            self.net.at(lat, Ev::ServerAccept(serial));
            self.net.log(format_args!("dial {serial}"));
        }
    }

    /// The dial of `serial` failed at `stage` (if it is still out).
    pub(super) fn client_fail(&mut self, serial: u64, stage: Stage) {
        let Some(ticket) = self
            .net
            .conns
            .get_mut(&serial)
            .and_then(|c| c.ticket.take())
        else {
            return;
        };
        self.net.client_gone(serial);
        self.client
            .handle_dial_failure(ticket, stage, self.net.now());
        self.oracle.failure(&mut self.net, &self.client);
        self.net
            .log(format_args!("client {serial} failed {stage:?}"));
        self.net.retire(serial);
    }

    /// The server's TLS answer reached the client: it starts reading the id.
    pub(super) fn client_tls_done(&mut self, serial: u64, delivery: Delivery) {
        let now = self.net.now();
        let form = self.client.config().id_form();
        let Some(c) = self.net.conns.get_mut(&serial) else {
            return;
        };
        let (Some(ticket), Some(id), None) = (c.ticket.as_ref(), c.id, c.reader.as_ref()) else {
            return;
        };
        let id_deadline = ticket.id_deadline(now);
        c.reader = Some(IdReader::new(form));
        self.net
            .at_instant(id_deadline, Ev::ClientIdDeadline(serial));
        self.net.send_id(serial, &id, self.server_form, delivery);
    }

    /// Id bytes reached the client.
    pub(super) fn client_bytes(&mut self, serial: u64, chunk: &[u8]) {
        let Some(c) = self.net.conns.get_mut(&serial) else {
            return;
        };
        let Some(reader) = c.reader.as_mut() else {
            return;
        };
        let remaining = reader.remaining();
        let Ok(fed) = reader.feed(chunk) else {
            return self.client_fail(serial, Stage::Id);
        };
        if fed.consumed > remaining {
            self.stats.overreads += 1;
        }
        let Some(id) = fed.id else { return };
        c.reader = None;
        let drawn = c.id;
        let Some(ticket) = c.ticket.take() else {
            return;
        };
        // Idle before the machine sees it: a waiting get may take it at once.
        c.client = Side::Idle;
        if drawn != Some(id) {
            // An id the server never drew got through the reader.
            self.stats.pairs_mismatched += 1;
        }
        let urgent = ticket.is_urgent();
        let was_backing_off = self.client.backing_off();
        self.client
            .handle_dial_success(ticket, id, serial, self.net.now());
        self.client_closes();
        let closed = self.net.conns.get(&serial).is_none_or(|c| c.client_closed);
        if !closed {
            self.net.log(format_args!("client {serial} landed {id}"));
            self.oracle.success(&self.net, urgent, was_backing_off);
        } else if !self.client.is_closed() {
            // The id was already idle here: the machine closed the connection and
            // counted a failure at the id stage (the server's id cannot be changed).
            self.stats.client_collisions += 1;
            self.oracle.failure(&mut self.net, &self.client);
            self.net
                .log(format_args!("client {serial} collided on {id}"));
        }
    }

    // --------------------------------------------------------------------------------
    // The server driver

    fn pump_server(&mut self) {
        let now = self.net.now();
        self.server_landed();
        while let Some(mut batch) = self.server.poll_probe(now) {
            let (net, evicted) = (&self.net, &mut self.stats.evicted_server);
            batch.check(|s| {
                let ok = net.alive_at_server(*s);
                *evicted += u64::from(!ok);
                ok
            });
            self.server.handle_probe(batch, now);
        }
        self.server_closes();
        while let Some(a) = self.server.poll_answer() {
            let arrived = self.server_waiting.remove(&a.key);
            if arrived.is_none() {
                self.stats.double_handouts += 1;
            }
            let wait = self
                .net
                .elapsed()
                .saturating_sub(arrived.unwrap_or_default());
            match a.result {
                Ok((id, serial)) => {
                    self.metrics.served_after(wait);
                    self.begin_pair(id, serial);
                }
                Err(e) => {
                    self.metrics.failed(wait);
                    self.stats.pairs_failed_server += 1;
                    self.net.log(format_args!("server get failed {e}"));
                }
            }
        }
    }

    /// Connections the server closed: its end is gone.
    fn server_closes(&mut self) {
        while let Some((_, serial)) = self.server.poll_close() {
            self.net.server_gone(serial);
            self.net.retire(serial);
        }
    }

    /// Connections whose settle time ended have landed (idle, or to a waiting get
    /// whose answer is drained next). The machine settles them in the order they
    /// became ready, so the oldest settling ones are those it no longer holds.
    fn server_landed(&mut self) {
        while self.settling.len() > self.server.settling() {
            let Some(serial) = self.settling.pop_front() else {
                break;
            };
            match self.net.conns.get_mut(&serial) {
                Some(c) if c.server == Side::Settling => c.server = Side::Idle,
                _ => self.stats.double_handouts += 1,
            }
        }
    }

    /// The server's timer fired: settle times, sweeps, waiters' deadlines.
    pub(super) fn server_timeout(&mut self) {
        self.server.handle_timeout(self.net.now());
    }

    /// A dial reached the server.
    pub(super) fn server_accept(&mut self, serial: u64) {
        let now = self.net.now();
        match self.net.conns.get(&serial) {
            Some(c) if !c.client_closed => {}
            // Gone, or the client gave up before the connection arrived.
            _ => return,
        }
        let mut ticket =
            match self
                .server
                .handle_accept(now, std::net::IpAddr::from([127, 0, 0, 1]), true)
            {
                Admission::Admit(t) => t,
                Admission::Refuse(r) => {
                    self.net.server_gone(serial);
                    self.stats.refused_by_server += 1;
                    let lat = self.net.latency();
                    self.net.at(lat, Ev::ClientFail(serial, Stage::Tls));
                    self.net.log(format_args!("server refused {serial} {r:?}"));
                    return;
                }
            };
        let collisions = self.server.counters().id_collisions;
        let id = self.server.assign_id(&mut ticket);
        self.stats.server_id_redraws += self.server.counters().id_collisions - collisions;
        let deadline = ticket.deadline();
        if let Some(c) = self.net.conns.get_mut(&serial) {
            c.id = Some(id);
            c.server = Side::Pending;
            c.hs = Some(ticket);
        }
        self.net.at_instant(deadline, Ev::ServerDeadline(serial));
        match self.net.handshake() {
            Handshake::TlsFail(tls) => {
                self.stats.injected_tls_fail += 1;
                self.net.at(tls, Ev::ServerTlsFail(serial));
            }
            Handshake::SilentTls => self.stats.injected_silence_tls += 1,
            Handshake::Ready(tls, delivery) => {
                match delivery {
                    Delivery::Full => {}
                    Delivery::Partial(_) => self.stats.injected_silence_id += 1,
                    Delivery::Corrupt(_) => self.stats.injected_bad_id += 1,
                }
                self.net.at(tls, Ev::ServerReady(serial, delivery));
            }
        }
        self.net
            .log(format_args!("server admitted {serial} as {id}"));
    }

    /// The handshake of `serial` failed at the server (if it is still under way).
    pub(super) fn server_fail(&mut self, serial: u64, stage: Stage) -> bool {
        let Some(t) = self.net.conns.get_mut(&serial).and_then(|c| c.hs.take()) else {
            return false;
        };
        self.net.server_gone(serial);
        self.server.handle_failure(t, stage, self.net.now());
        self.net
            .log(format_args!("server {serial} failed {stage:?}"));
        true
    }

    /// The server finished TLS and wrote the id: the connection settles there, and the
    /// id travels to the client.
    pub(super) fn server_ready(&mut self, serial: u64, delivery: Delivery) {
        let now = self.net.now();
        let Some(c) = self.net.conns.get_mut(&serial) else {
            return;
        };
        if c.client_closed {
            // The client gave up first: the handshake fails here too.
            self.server_fail(serial, Stage::Tls);
            self.net.retire(serial);
            return;
        }
        let Some(t) = c.hs.take() else { return };
        c.server = Side::Settling;
        self.settling.push_back(serial);
        self.server.handle_ready(t, serial, now);
        self.server_landed();
        self.server_closes();
        if self.net.alive_at_client(serial) {
            let lat = self.net.latency();
            self.net.at(lat, Ev::ClientTlsDone(serial, delivery));
            self.net.log(format_args!("server {serial} ready"));
        } else {
            // Closed at once (the machine is closed): the client's TLS fails.
            let lat = self.net.latency();
            self.net.at(lat, Ev::ClientFail(serial, Stage::Tls));
        }
    }

    // --------------------------------------------------------------------------------
    // The application

    /// A user arrives: a server get.
    pub(super) fn user(&mut self) {
        let arrived = self.net.elapsed();
        self.metrics.arrived(arrived);
        if self.server_waiting.len() >= self.net.opts.max_waiting {
            self.stats.demand_dropped += 1;
            self.metrics.failed(self.net.opts.server_get_timeout);
            return;
        }
        let now = self.net.now();
        let deadline = now + self.net.opts.server_get_timeout;
        let first = self.server.get(now, deadline);
        let (net, server) = (&self.net, &mut self.server);
        let got = follow_checks(
            first,
            &mut self.stats.evicted_server,
            |s| net.alive_at_server(s),
            |c, ok| server.handle_check(c, ok, now),
        );
        self.server_closes();
        match got {
            Got::Ready(id, serial) => {
                self.metrics.served_at_once(arrived);
                self.begin_pair(id, serial);
            }
            Got::Wait(key) => {
                self.server_waiting.insert(key, arrived);
            }
            Got::Failed(e) => {
                self.metrics.failed(Duration::ZERO);
                self.stats.pairs_failed_server += 1;
                self.net.log(format_args!("server get failed {e}"));
            }
            Got::Check(_) => unreachable!("follow_checks follows every check"),
        }
    }

    /// The server handed out `serial`: its id goes over the control channel.
    fn begin_pair(&mut self, id: ConnId, serial: u64) {
        match self.net.conns.get_mut(&serial) {
            Some(c) if c.server == Side::Idle => {
                c.server = Side::Taken;
                if c.id != Some(id) {
                    self.stats.pairs_mismatched += 1;
                }
            }
            _ => self.stats.double_handouts += 1,
        }
        let lat = self.net.control_latency();
        self.net.at(lat, Ev::Control(id, serial));
        self.net.log(format_args!("server gave {id} = {serial}"));
    }

    /// The id arrived over the control channel: a client get by id.
    pub(super) fn control(&mut self, id: ConnId, serial: u64) {
        let now = self.net.now();
        let deadline = now + self.net.opts.client_get_timeout;
        let first = self.client.get(id, now, deadline);
        let (net, client) = (&self.net, &mut self.client);
        let got = follow_checks(
            first,
            &mut self.stats.evicted_client,
            |s| net.alive_at_client(s),
            |c, ok| client.handle_check(c, ok, now),
        );
        self.client_closes();
        match got {
            Got::Ready(got_id, got) => self.finish_pair(id, serial, got_id, got),
            Got::Wait(key) => {
                self.client_waiting.insert(key, (id, serial));
            }
            Got::Failed(e) => self.abandon_pair(serial, e),
            Got::Check(_) => unreachable!("follow_checks follows every check"),
        }
    }

    fn finish_pair(&mut self, id: ConnId, serial: u64, got_id: ConnId, got: u64) {
        match self.net.conns.get_mut(&got) {
            Some(c) if c.client == Side::Idle => c.client = Side::Taken,
            _ => self.stats.double_handouts += 1,
        }
        if got_id != id || got != serial {
            self.stats.pairs_mismatched += 1;
            self.net
                .log(format_args!("MISMATCH {id}={serial} vs {got_id}={got}"));
        } else {
            self.stats.pairs_ok += 1;
            self.net.log(format_args!("pair {id} = {serial}"));
        }
        self.net.retire(serial);
        self.net.retire(got);
    }

    /// The client side could not take the connection: the application closes the
    /// server's end.
    fn abandon_pair(&mut self, serial: u64, e: GetError) {
        self.stats.pairs_failed_client += 1;
        if let Some(c) = self.net.conns.get_mut(&serial) {
            c.server_closed = true;
        }
        self.net.log(format_args!("client get failed {serial} {e}"));
        self.net.retire(serial);
    }

    /// Processes one network or application event.
    pub(super) fn process(&mut self, ev: Ev) {
        match ev {
            Ev::ServerAccept(s) => self.server_accept(s),
            Ev::ServerTlsFail(s) => {
                if self.server_fail(s, Stage::Tls) {
                    let lat = self.net.latency();
                    self.net.at(lat, Ev::ClientFail(s, Stage::Tls));
                }
            }
            Ev::ServerReady(s, d) => self.server_ready(s, d),
            Ev::ServerDeadline(s) => {
                self.server_fail(s, Stage::Tls);
                self.net.retire(s);
            }
            Ev::ClientFail(s, stage) => self.client_fail(s, stage),
            Ev::ClientTlsDone(s, d) => self.client_tls_done(s, d),
            Ev::ClientBytes(s, chunk, n) => self.client_bytes(s, &chunk[..usize::from(n)]),
            Ev::ClientHandshakeDeadline(s) => {
                if self.net.conns.get(&s).is_some_and(|c| c.reader.is_none()) {
                    self.client_fail(s, Stage::Tls);
                }
            }
            Ev::ClientIdDeadline(s) => {
                if self.net.conns.get(&s).is_some_and(|c| c.reader.is_some()) {
                    self.client_fail(s, Stage::Id);
                }
            }
            Ev::Control(id, s) => self.control(id, s),
        }
    }
}

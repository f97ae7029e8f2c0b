//! Both pools on pool-core's driver protocol, and the application that uses them.
//!
//! Each pool is a [`Driver`](pool_core::driver::Driver) on the simulator's
//! [`Platform`](pool_core::driver::Platform) (`platform.rs`): the same protocol code the
//! tokio and threads pools run. A driver call performs its outputs at once by queueing
//! them on the wire; [`SimPair::drain_wire`] then plays each one out on the network
//! model: a dial becomes a simulated connection, an abort ends a dial or handshake
//! whose deadline the core saw pass, an answer goes to the application's waiting get,
//! a close closes one end, a wake-up schedules the driver's next turn. The liveness of
//! a connection is whatever the network says about its other end, answered by the
//! platform when the protocol probes.

use pool_core::driver::{Readied, Step, Task};
use pool_core::{Admission, ConnId, DialTicket, GetFailure, IdReader, Stage, Want};

use super::net::{Delivery, Ev, Handshake, Side};
use super::platform::{End, Request};
use super::SimPair;

impl SimPair {
    /// Plays out every request the drivers queued, until none is left, then checks the
    /// round prediction.
    pub(super) fn drain_wire(&mut self) {
        self.server_landed();
        while let Some(request) = self.net.wire.pop() {
            match request {
                Request::Wake(end, at) => {
                    let at = self.net.clock.offset_of(at);
                    let wake = match end {
                        End::Client => &mut self.client_wake,
                        End::Server => &mut self.server_wake,
                    };
                    *wake = Some(wake.map_or(at, |w| w.min(at)));
                }
                Request::Task(End::Client, Task::Dial(ticket)) => {
                    let urgent = ticket.is_urgent();
                    let (oracle, net) = (&mut self.oracle, &mut self.net);
                    self.client.read(|m| oracle.ticket(net, m, urgent));
                    self.start_dial(ticket);
                }
                Request::Task(End::Client, Task::Abort(serial, _)) => {
                    // The core saw the dial's deadline pass: reading the id, or before.
                    let reading = self.net.conns.get(&serial).map(|c| c.reader.is_some());
                    let stage = if reading == Some(true) {
                        Stage::Id
                    } else {
                        Stage::Tls
                    };
                    self.client_fail(serial, stage);
                }
                Request::Task(End::Server, Task::Abort(hs, _)) => {
                    // Past its deadline (or evicted): the handshake's connection.
                    if let Some(serial) = self.hs_serials.get(&hs).copied() {
                        self.server_fail(serial, Stage::Tls);
                        self.net.retire(serial);
                    }
                }
                Request::Task(End::Server, Task::Dial(ticket)) => drop(ticket),
                Request::Close(End::Client, serial) => {
                    self.net.client_gone(serial);
                    self.hang_up_at_server(serial);
                    self.net.retire(serial);
                }
                Request::Close(End::Server, serial) => {
                    self.net.server_gone(serial);
                    self.hang_up_at_client(serial);
                    self.net.retire(serial);
                }
                Request::Reply(tag, delivery) => {
                    self.server_landed();
                    self.answered(tag, delivery);
                }
            }
        }
        if self.net.opts.oracle {
            let (oracle, net) = (&mut self.oracle, &mut self.net);
            self.client.read(|m| oracle.check(net, m));
        }
    }

    // --------------------------------------------------------------------------------
    // The client driver

    /// The client driver's turn is due (its refill timer, a sweep, a deadline).
    pub(super) fn client_timeout(&mut self) {
        let (starting, before) = self.client.read(|m| {
            let starting = !m.is_closed() && self.oracle.round_due(&self.net, m);
            (starting, m.status())
        });
        self.client_wake = self.turn(End::Client);
        if starting {
            let (oracle, net) = (&mut self.oracle, &mut self.net);
            self.client.read(|m| oracle.start_round(net, m, before));
        }
    }

    fn start_dial(&mut self, ticket: DialTicket) {
        self.stats.dials += 1;
        let serial = self.net.open(ticket);
        let lat = self.net.latency();
        if self.server_down() || self.net.connect_refused() {
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
        let _ = self.client.dialed(ticket, Err(stage));
        let (oracle, net) = (&mut self.oracle, &mut self.net);
        self.client.read(|m| oracle.failure(net, m));
        self.net
            .log(format_args!("client {serial} failed {stage:?}"));
        self.net.retire(serial);
    }

    /// The server's TLS answer reached the client: it starts reading the id, and the
    /// core's deadline for the dial becomes the id deadline.
    pub(super) fn client_tls_done(&mut self, serial: u64, delivery: Delivery) {
        let form = self.client.read(|m| m.config().id_form());
        let Some(c) = self.net.conns.get_mut(&serial) else {
            return;
        };
        if c.ticket.as_ref().is_some_and(|t| !t.reads_id()) {
            return self.client_single(serial);
        }
        let (Some(_), Some(id), None) = (c.ticket.as_ref(), c.id, c.reader.as_ref()) else {
            return;
        };
        c.reader = Some(IdReader::new(form));
        self.client
            .input(|m, now| m.handle_handshake_done(serial, now));
        if self.net.opts.chunked_ids || !matches!(delivery, Delivery::Full) {
            self.net.send_id(serial, &id, self.server_form, delivery);
        } else {
            // Fault free and unchunked: the id arrives whole, with the end of TLS.
            let (bytes, sent) = super::net::Net::id_bytes(&id, self.server_form, delivery);
            self.client_bytes(serial, &bytes[..sent]);
        }
    }

    /// Single mode: the connection is up, and no id travels; the core draws it, and the
    /// connection lands under it (the server's end is left to itself).
    fn client_single(&mut self, serial: u64) {
        let Some(c) = self.net.conns.get_mut(&serial) else {
            return;
        };
        let Some(mut ticket) = c.ticket.take() else {
            return;
        };
        c.client = Side::Idle;
        let urgent = ticket.is_urgent();
        let was_backing_off = self.client.read(|m| m.backing_off());
        let id = self.client.input(|m, _| m.assign_id(&mut ticket));
        let _ = self.client.dialed(ticket, Ok((id, serial)));
        self.net
            .log(format_args!("client {serial} landed {id} (single)"));
        self.oracle.success(&self.net, urgent, was_backing_off);
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
        let was_backing_off = self.client.read(|m| m.backing_off());
        let _ = self.client.dialed(ticket, Ok((id, serial)));
        // A close of this connection (its id was already idle) is queued: play it out.
        self.drain_closes();
        let closed = self.net.conns.get(&serial).is_none_or(|c| c.client_closed);
        if !closed {
            self.net.log(format_args!("client {serial} landed {id}"));
            self.oracle.success(&self.net, urgent, was_backing_off);
            if self.net.wire.is_pending(serial) {
                // The server started a session on it before it landed here: the
                // watch reports the bytes as soon as it is watched.
                self.client_started(serial);
            }
        } else if !self.client.read(|m| m.is_closed()) {
            // The id was already idle here: the machine closed the connection and
            // counted a failure at the id stage (the server's id cannot be changed).
            self.stats.client_collisions += 1;
            let (oracle, net) = (&mut self.oracle, &mut self.net);
            self.client.read(|m| oracle.failure(net, m));
            self.net
                .log(format_args!("client {serial} collided on {id}"));
        }
    }

    /// Plays out the closes queued so far, keeping every other request in order.
    fn drain_closes(&mut self) {
        let mut kept = Vec::new();
        while let Some(r) = self.net.wire.pop() {
            match r {
                Request::Close(End::Client, serial) => {
                    self.net.client_gone(serial);
                    self.hang_up_at_server(serial);
                    self.net.retire(serial);
                }
                other => kept.push(other),
            }
        }
        self.net.wire.requeue(kept);
    }

    // --------------------------------------------------------------------------------
    // The server driver

    /// Connections whose settle time ended have landed (idle, or to a waiting get
    /// whose answer is on the wire). The machine settles them in the order they
    /// became ready, so the oldest settling ones are those it no longer holds.
    fn server_landed(&mut self) {
        let settling = self.server.read(|m| m.settling());
        while self.settling.len() > settling {
            let Some(serial) = self.settling.pop_front() else {
                break;
            };
            match self.net.conns.get_mut(&serial) {
                Some(c) if c.server == Side::Settling => c.server = Side::Idle,
                _ => self.stats.double_handouts += 1,
            }
        }
    }

    /// The server driver's turn is due (settle times, sweeps, deadlines).
    pub(super) fn server_timeout(&mut self) {
        self.server_wake = self.turn(End::Server);
    }

    /// A dial reached the server.
    pub(super) fn server_accept(&mut self, serial: u64) {
        match self.net.conns.get(&serial) {
            Some(c) if !c.client_closed => {}
            // Gone, or the client gave up before the connection arrived.
            _ => return,
        }
        if self.server_down() {
            // The port refuses (the server is restarting): a reset comes back.
            self.stats.injected_connect_refused += 1;
            let lat = self.net.latency();
            self.net.at(lat, Ev::ClientFail(serial, Stage::Connect));
            return;
        }
        let peer = std::net::IpAddr::from([127, 0, 0, 1]);
        let admission = self.server.input(|m, now| m.handle_accept(now, peer, true));
        let mut ticket = match admission {
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
        let (id, redraws) = self.server.input(|m, _| {
            let before = m.counters().id_collisions;
            let id = m.assign_id(&mut ticket);
            (id, m.counters().id_collisions - before)
        });
        self.stats.server_id_redraws += redraws;
        let hs_serial = ticket.serial();
        if let Some(c) = self.net.conns.get_mut(&serial) {
            c.id = Some(id);
            c.server = Side::Pending;
            c.hs = Some(ticket);
        }
        self.hs_serials.insert(hs_serial, serial);
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
        self.hs_serials.remove(&t.serial());
        self.net.server_gone(serial);
        self.server.handshaken(t, Err(stage));
        self.net
            .log(format_args!("server {serial} failed {stage:?}"));
        true
    }

    /// The server finished TLS and wrote the id: the connection settles there, and the
    /// id travels to the client.
    pub(super) fn server_ready(&mut self, serial: u64, delivery: Delivery) {
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
        self.hs_serials.remove(&t.serial());
        c.server = Side::Settling;
        self.settling.push_back(serial);
        self.server.handshaken(t, Ok(serial));
        self.drain_wire();
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
        let timeout = self.net.opts.server_get_timeout;
        match self.server.get(Want::Any, timeout) {
            Step::Ready(id, serial) => {
                self.metrics.served_at_once(arrived);
                self.begin_pair(id, serial);
            }
            Step::Wait(w) => {
                self.server_waiting.insert(w.wait, (w.get, arrived));
            }
            Step::Failed(e) => {
                self.metrics.failed(std::time::Duration::ZERO);
                self.stats.pairs_failed_server += 1;
                self.net.log(format_args!("server get failed {e}"));
            }
        }
    }

    /// The answer to a waiting get, under its reply tag.
    fn answered(&mut self, tag: u64, delivery: pool_core::driver::Delivery<u64>) {
        if let Some((get, arrived)) = self.server_waiting.remove(&tag) {
            let step = self.server.arrived(get, delivery);
            self.server_step(step, arrived);
        } else if let Some((get, id, serial)) = self.client_waiting.remove(&tag) {
            let step = self.client.arrived(get, delivery);
            self.client_step(step, id, serial);
        } else {
            self.stats.double_handouts += 1;
        }
    }

    fn server_step(&mut self, step: Step<u64, u64>, arrived: std::time::Duration) {
        let wait = self.net.elapsed().saturating_sub(arrived);
        match step {
            Step::Ready(id, serial) => {
                self.metrics.served_after(wait);
                self.begin_pair(id, serial);
            }
            Step::Wait(w) => {
                self.server_waiting.insert(w.wait, (w.get, arrived));
            }
            Step::Failed(e) => {
                self.metrics.failed(wait);
                self.stats.pairs_failed_server += 1;
                self.net.log(format_args!("server get failed {e}"));
            }
        }
    }

    /// The server handed out `serial`: its id goes over the control channel.
    fn begin_pair(&mut self, id: ConnId, serial: u64) {
        self.server_landed();
        match self.net.conns.get_mut(&serial) {
            Some(c) if c.server == Side::Idle => {
                c.server = Side::Taken;
                if c.id != Some(id) {
                    self.stats.pairs_mismatched += 1;
                }
            }
            _ => self.stats.double_handouts += 1,
        }
        if self.in_band() {
            // The start header goes on the connection itself: one network latency.
            let lat = self.net.latency();
            self.net.at(lat, Ev::Started(serial));
            self.net.log(format_args!("server started {id} = {serial}"));
            return;
        }
        let lat = self.net.control_latency();
        self.net.at(lat, Ev::Control(id, serial));
        self.net.log(format_args!("server gave {id} = {serial}"));
    }

    /// Whether the client runs in-band mode.
    pub(super) fn in_band(&self) -> bool {
        self.client.read(|m| m.config().in_band())
    }

    /// The start header reached the client's end of `serial`.
    fn started(&mut self, serial: u64) {
        self.net.wire.set_pending(serial);
        let Some(c) = self.net.conns.get(&serial) else {
            return;
        };
        if c.client == Side::Idle {
            self.client_started(serial);
        } else if c.ticket.is_none() {
            // Gone at the client meanwhile: no session.
            self.abandon_pair(serial, GetFailure::NotFound);
        }
        // Still landing: the landing reports it.
    }

    /// The client's watch reports bytes on `serial`, idle there: the driver peeks and
    /// hands it to the application's accept.
    pub(super) fn client_started(&mut self, serial: u64) {
        let Some(id) = self.net.conns.get(&serial).and_then(|c| c.id) else {
            return;
        };
        match self.client.idle_ready(id) {
            Readied::Started => {
                self.net.log(format_args!("client {serial} started"));
                let timeout = self.net.opts.client_get_timeout;
                let step = self.client.get(Want::Started, timeout);
                self.client_step(step, id, serial);
            }
            other => {
                self.net
                    .log(format_args!("client {serial} not started: {other:?}"));
                self.abandon_pair(serial, GetFailure::NotFound);
            }
        }
    }

    /// The server's end of `serial` closed: a client that watches hears of it one
    /// network latency later.
    pub(super) fn hang_up_at_client(&mut self, serial: u64) {
        let watching = self.net.opts.watch_idle || self.in_band();
        if watching && self.net.conns.contains_key(&serial) {
            let lat = self.net.latency();
            self.net.at(lat, Ev::ClientHangUp(serial));
        }
    }

    /// The client's end of `serial` closed: a server that watches hears of it one
    /// network latency later.
    fn hang_up_at_server(&mut self, serial: u64) {
        if self.net.opts.watch_idle && self.net.conns.contains_key(&serial) {
            let lat = self.net.latency();
            self.net.at(lat, Ev::ServerHangUp(serial));
        }
    }

    /// A hang-up reported to `end`'s driver, for the connection it holds idle.
    fn hung_up(&mut self, serial: u64, client: bool) {
        let Some(c) = self.net.conns.get(&serial) else {
            return;
        };
        let Some(id) = c.id else { return };
        let held = if client {
            c.client == Side::Idle
        } else {
            matches!(c.server, Side::Idle | Side::Settling)
        };
        if !held {
            return;
        }
        let readied = if client {
            self.client.idle_ready(id)
        } else {
            self.server.idle_ready(id)
        };
        self.net.log(format_args!(
            "hang-up {serial} client={client}: {readied:?}"
        ));
    }

    /// The id arrived over the control channel: a client get by id.
    pub(super) fn control(&mut self, id: ConnId, serial: u64) {
        let timeout = self.net.opts.client_get_timeout;
        let step = self.client.get(Want::Id(id), timeout);
        self.client_step(step, id, serial);
    }

    fn client_step(&mut self, step: Step<u64, u64>, id: ConnId, serial: u64) {
        match step {
            Step::Ready(got_id, got) => self.finish_pair(id, serial, got_id, got),
            Step::Wait(w) => {
                self.client_waiting.insert(w.wait, (w.get, id, serial));
            }
            Step::Failed(e) => self.abandon_pair(serial, e),
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
    fn abandon_pair(&mut self, serial: u64, e: GetFailure) {
        self.stats.pairs_failed_client += 1;
        self.net.server_end_closed(serial);
        self.hang_up_at_client(serial);
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
            Ev::ClientFail(s, stage) => self.client_fail(s, stage),
            Ev::ClientTlsDone(s, d) => self.client_tls_done(s, d),
            Ev::ClientBytes(s, chunk, n) => self.client_bytes(s, &chunk[..usize::from(n)]),
            Ev::Control(id, s) => self.control(id, s),
            Ev::Started(s) => self.started(s),
            Ev::ClientHangUp(s) => self.hung_up(s, true),
            Ev::ServerHangUp(s) => self.hung_up(s, false),
        }
    }
}

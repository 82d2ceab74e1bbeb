//! The in-memory directory: subscribers (credentials + routing profile) and their live
//! bindings (the location service, RFC 3261 §10.3).
//!
//! The store is the durable copy; the driver loads it at start and the core reports every
//! change as an [`super::Event`] so the driver writes it back. Keeping the working copy here
//! keeps the fork path free of database round trips.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{ConnId, Transport};
use crate::message::Uri;

/// What the core needs to know about a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberEntry {
    /// User part of the address of record.
    pub user: String,
    /// MD5 HA1 (hex).
    pub ha1_md5: String,
    /// SHA-256 HA1 (hex).
    pub ha1_sha256: String,
    /// How long a forked INVITE rings before the caller gets 480.
    pub ring_timeout: Duration,
    /// Delayed branches: (contact URI substring, delay).
    pub ring_delays: Vec<(String, Duration)>,
}

/// Where to send to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// Transport to use.
    pub transport: Transport,
    /// Destination address.
    pub addr: SocketAddr,
    /// An existing connection to reuse (stream transports).
    pub conn: Option<ConnId>,
}

/// One registered contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The contact URI as registered.
    pub contact: String,
    /// Parsed contact URI (the branch's Request-URI).
    pub uri: Uri,
    /// Where requests for this contact go (see [`Binding::locate`]).
    pub target: Target,
    /// Where the REGISTER came from (transport and source address, RFC 3581 style).
    pub source: Target,
    /// REGISTER Call-ID.
    pub call_id: String,
    /// REGISTER CSeq.
    pub cseq: u32,
    /// Expiry.
    pub expires_at: Instant,
    /// q-value times 1000.
    pub q: u16,
    /// The enrolled phone this binding belongs to (registered with the device's
    /// credentials): its branch must prove trust before it is connected (R14).
    pub device: Option<String>,
    /// How the contact is reached (direct, behind NAT, an RFC 5626 flow).
    pub reach: Reach,
}

/// How a binding's contact is reached (see the `nat` module).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Reach {
    /// At the Contact's own address (over the REGISTER's flow when that is the same address).
    #[default]
    Direct,
    /// Behind NAT: at the REGISTER's source; NATed UDP bindings are pinged.
    Nat,
    /// An RFC 5626 flow: at the REGISTER's source, replaced by a REGISTER of the same
    /// instance and reg-id, dropped when its connection closes.
    Outbound {
        /// The `+sip.instance` value.
        instance: String,
        /// The `reg-id`.
        reg_id: u32,
    },
    /// Only over the connection the REGISTER came over, like an RFC 5626 flow: a
    /// registration over TLS. The proxy opens no TLS connection of its own (it would have to
    /// verify the client's certificate against a name it does not have), so the
    /// registration's connection is the only way to the contact; the binding is dropped
    /// when that connection closes, and does not survive a restart.
    Connection,
}

impl Binding {
    /// Where requests for `contact`, registered from `source`, go and how it is reached
    /// (the rules are in the `nat` module): over the REGISTER's flow (and TCP connection)
    /// for an RFC 5626 flow (`outbound`: instance and reg-id, or `;ob` in the URI), for a
    /// private or unspecified address that is not the source, and for a host name we do
    /// not resolve; at the Contact's own address otherwise.
    ///
    /// A registration over TLS is reached over its connection only, whatever its Contact
    /// says ([`Reach::Connection`]): the proxy never opens a TLS connection of its own.
    pub fn locate(
        contact: &Uri,
        outbound: Option<(String, u32)>,
        source: Target,
        nat: &super::NatConfig,
    ) -> (Target, Reach) {
        if let Some((instance, reg_id)) = outbound {
            return (source, Reach::Outbound { instance, reg_id });
        }
        if source.transport == Transport::Tls {
            return (source, Reach::Connection);
        }
        if contact.param("ob").is_some() {
            return (source, Reach::Nat);
        }
        match super::route::literal_target(contact) {
            Some(t) if t.addr == source.addr => (source, Reach::Direct),
            Some(t) if nat.is_private(t.addr.ip()) => (source, Reach::Nat),
            Some(t) => (t, Reach::Direct),
            None => (source, Reach::Nat),
        }
    }
}

/// An enrolled phone as the core sees it (R9, R10, R14). Its digest user name is
/// [`DEVICE_USER_PREFIX`] + `id`, which no subscriber name can be (they start with a letter
/// or digit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    /// Public device id.
    pub id: String,
    /// The subscriber whose calls the phone takes.
    pub user: String,
    /// MD5 HA1 of the device's SIP credentials (hex).
    pub ha1_md5: String,
    /// SHA-256 HA1 of the device's SIP credentials (hex).
    pub ha1_sha256: String,
    /// The user's single-number switch (R10): off means the phone does not ring.
    pub service_on: bool,
    /// The phone's own number (E.164, `+` and digits): with a gateway configured and no
    /// live SIP binding of the phone, its branch goes through the gateway to this number.
    pub number: Option<String>,
}

/// Prefix of a device's digest user name.
pub const DEVICE_USER_PREFIX: char = '~';

/// Most bindings one address of record may hold (bounds memory per subscriber).
pub const MAX_BINDINGS_PER_USER: usize = 16;

#[derive(Debug, Default)]
pub(crate) struct Directory {
    subscribers: HashMap<String, SubscriberEntry>,
    devices: HashMap<String, DeviceEntry>,
    bindings: HashMap<String, Vec<Binding>>,
}

impl Directory {
    pub(crate) fn upsert(&mut self, entry: SubscriberEntry) {
        self.subscribers.insert(entry.user.clone(), entry);
    }

    pub(crate) fn remove(&mut self, user: &str) {
        self.subscribers.remove(user);
        self.bindings.remove(user);
        self.devices.retain(|_, d| d.user != user);
    }

    pub(crate) fn upsert_device(&mut self, entry: DeviceEntry) {
        self.devices.insert(entry.id.clone(), entry);
    }

    /// Forgets a device and drops its bindings; returns (user, contact) of each dropped one.
    pub(crate) fn remove_device(&mut self, id: &str) -> Vec<(String, String)> {
        let Some(dev) = self.devices.remove(id) else {
            return Vec::new();
        };
        let mut dropped = Vec::new();
        if let Some(list) = self.bindings.get_mut(&dev.user) {
            list.retain(|b| {
                let mine = b.device.as_deref() == Some(id);
                if mine {
                    dropped.push((dev.user.clone(), b.contact.clone()));
                }
                !mine
            });
        }
        dropped
    }

    /// The devices of subscriber `user` (in no particular order).
    pub(crate) fn devices_of<'a>(
        &'a self,
        user: &'a str,
    ) -> impl Iterator<Item = &'a DeviceEntry> + 'a {
        self.devices.values().filter(move |d| d.user == user)
    }

    pub(crate) fn device(&self, id: &str) -> Option<&DeviceEntry> {
        self.devices.get(id)
    }

    /// The stored HA1 for digest user `name` (a subscriber, or a phone's `~id`) and `alg`.
    pub(crate) fn ha1(&self, name: &str, alg: crate::auth::Algorithm) -> Option<String> {
        let (md5, sha256) = match self.device_for_username(name) {
            Some(d) => (&d.ha1_md5, &d.ha1_sha256),
            None => {
                let s = self.subscriber(name)?;
                (&s.ha1_md5, &s.ha1_sha256)
            }
        };
        Some(match alg {
            crate::auth::Algorithm::Md5 => md5.clone(),
            _ => sha256.clone(),
        })
    }

    /// The device behind a digest user name (`~id`), if it is one.
    pub(crate) fn device_for_username(&self, name: &str) -> Option<&DeviceEntry> {
        name.strip_prefix(DEVICE_USER_PREFIX)
            .and_then(|id| self.devices.get(id))
    }

    pub(crate) fn subscriber(&self, user: &str) -> Option<&SubscriberEntry> {
        self.subscribers.get(user)
    }

    /// Live bindings of `user`, best q first.
    pub(crate) fn live_bindings(&self, user: &str, now: Instant) -> Vec<Binding> {
        let mut out: Vec<Binding> = self
            .bindings
            .get(user)
            .map(|b| b.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default();
        out.sort_by_key(|b| std::cmp::Reverse(b.q));
        out
    }

    /// How many bindings are live at `now`, every user together (for metrics).
    pub(crate) fn live_count(&self, now: Instant) -> usize {
        self.bindings
            .values()
            .map(|list| list.iter().filter(|b| b.expires_at > now).count())
            .sum()
    }

    /// Inserts or refreshes a binding; drops expired ones of the same user.
    /// Returns `false` if the user already holds [`MAX_BINDINGS_PER_USER`] other bindings.
    pub(crate) fn put_binding(&mut self, user: &str, b: Binding, now: Instant) -> bool {
        let list = self.bindings.entry(user.to_owned()).or_default();
        list.retain(|x| x.expires_at > now);
        if let Some(existing) = list.iter_mut().find(|x| x.contact == b.contact) {
            *existing = b;
            return true;
        }
        if list.len() >= MAX_BINDINGS_PER_USER {
            return false;
        }
        list.push(b);
        true
    }

    pub(crate) fn existing(&self, user: &str, contact: &str) -> Option<&Binding> {
        self.bindings
            .get(user)?
            .iter()
            .find(|b| b.contact == contact)
    }

    pub(crate) fn remove_binding(&mut self, user: &str, contact: &str) -> bool {
        let Some(list) = self.bindings.get_mut(user) else {
            return false;
        };
        let before = list.len();
        list.retain(|b| b.contact != contact);
        before != list.len()
    }

    /// Removes `user`'s bindings made by `device` (`None`: the non-device ones); returns
    /// their contacts.
    pub(crate) fn remove_bindings_of(&mut self, user: &str, device: Option<&str>) -> Vec<String> {
        let Some(list) = self.bindings.get_mut(user) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        list.retain(|b| {
            let hit = b.device.as_deref() == device;
            if hit {
                removed.push(b.contact.clone());
            }
            !hit
        });
        removed
    }

    /// Forgets a closed connection. A direct binding keeps its address and will reconnect;
    /// one reached only over that connection (behind NAT, or an RFC 5626 flow) cannot be
    /// reached any more and is dropped: returns (user, contact) of each dropped one.
    pub(crate) fn connection_closed(&mut self, conn: ConnId) -> Vec<(String, String)> {
        let mut dropped = Vec::new();
        for (user, list) in self.bindings.iter_mut() {
            list.retain_mut(|b| {
                if b.target.conn != Some(conn) {
                    return true;
                }
                if b.reach == Reach::Direct {
                    b.target.conn = None;
                    return true;
                }
                dropped.push((user.clone(), b.contact.clone()));
                false
            });
        }
        dropped
    }

    /// `user`'s bindings of RFC 5626 `instance` and `reg_id` other than `contact`: a new
    /// registration of the flow replaces them.
    pub(crate) fn same_flow(
        &self,
        user: &str,
        instance: &str,
        reg_id: u32,
        contact: &str,
    ) -> Vec<String> {
        self.bindings
            .get(user)
            .into_iter()
            .flatten()
            .filter(|b| {
                b.contact != contact
                    && matches!(&b.reach, Reach::Outbound { instance: i, reg_id: r }
                        if i == instance && *r == reg_id)
            })
            .map(|b| b.contact.clone())
            .collect()
    }

    /// Every live NATed UDP binding at `now`: (user, contact, target, contact URI).
    pub(crate) fn nated_udp(&self, now: Instant) -> Vec<(String, String, Target, Uri)> {
        self.bindings
            .iter()
            .flat_map(|(user, list)| {
                list.iter()
                    .filter(move |b| {
                        b.expires_at > now
                            && b.reach != Reach::Direct
                            && b.target.transport == Transport::Udp
                    })
                    .map(move |b| (user.clone(), b.contact.clone(), b.target, b.uri.clone()))
            })
            .collect()
    }

    /// A binding whose contact URI host:port is `addr`, used to reach in-dialog targets over
    /// the transport and connection the device registered with.
    pub(crate) fn target_for_contact(&self, uri: &Uri) -> Option<Target> {
        let port = super::route::uri_port(uri);
        self.bindings.values().flatten().find_map(|b| {
            (b.uri.host == uri.host && super::route::uri_port(&b.uri) == port).then_some(b.target)
        })
    }
}

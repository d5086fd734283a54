//! The hosts' part of a stored record (format version 3), after the window: the flags,
//! clocks and count of [`Hosts`], then each host with its address. Addresses came from
//! outside once, so one is read back only if [`Address::new`] could have made it, and the
//! table only within its bounds.

use crate::core::bytes::Reader;
use crate::core::hosts::{Address, Host, Hosts, MAX_HOSTS};

use super::DecodeError;

/// Flags, count, answers, calls and the time the first host was heard.
pub(super) const HOSTS_FIXED_LEN: usize = 26;
/// A host's fixed fields: address length, heard, failed, slow, flags.
pub(super) const HOST_FIXED_LEN: usize = 26;
/// Stands for "never" in a host's failed and slow fields.
const NEVER: u64 = u64::MAX;

/// Appends the hosts to a record's bytes.
pub(super) fn put(out: &mut Vec<u8>, h: &Hosts) {
    let addresses: usize = h
        .hosts
        .iter()
        .map(|host| host.address.map_or(0, |a| a.as_bytes().len()))
        .sum();
    out.reserve(HOSTS_FIXED_LEN + h.hosts.len() * HOST_FIXED_LEN + addresses);
    out.push(u8::from(h.confined) | u8::from(h.by_calls) << 1);
    out.push(h.hosts.len() as u8);
    out.extend_from_slice(&h.answers.to_le_bytes());
    out.extend_from_slice(&h.calls.to_le_bytes());
    out.extend_from_slice(&h.since_ms.to_le_bytes());
    for host in &h.hosts {
        let address = host.address.as_ref().map_or(&[][..], Address::as_bytes);
        out.push(address.len() as u8);
        out.extend_from_slice(address);
        out.extend_from_slice(&host.heard.to_le_bytes());
        for mark in [host.failed, host.slow] {
            out.extend_from_slice(&mark.unwrap_or(NEVER).to_le_bytes());
        }
        out.push(u8::from(host.in_streak));
    }
}

/// Reads the hosts of a record `total` bytes long, refusing what [`put`] would not write.
pub(super) fn decode(total: usize, rd: &mut Reader) -> Result<Hosts, DecodeError> {
    let short = || DecodeError::Length(total);
    let flags = rd.u8().ok_or_else(short)?;
    let n = usize::from(rd.u8().ok_or_else(short)?);
    let mut h = Hosts {
        hosts: Vec::new(),
        answers: rd.u64().ok_or_else(short)?,
        calls: rd.u64().ok_or_else(short)?,
        since_ms: rd.u64().ok_or_else(short)?,
        by_calls: flags & 2 != 0,
        confined: flags & 1 != 0,
    };
    if flags > 3 {
        return Err(DecodeError::Field("hosts.flags", flags.into()));
    }
    if n > MAX_HOSTS + 1 {
        return Err(DecodeError::Field("hosts.count", n as u64));
    }
    h.hosts.reserve(n);
    for _ in 0..n {
        let host = decode_host(total, rd, h.answers)?;
        if h.hosts.iter().any(|o| o.address == host.address) {
            return Err(DecodeError::Field("hosts.address", h.hosts.len() as u64));
        }
        h.hosts.push(host);
    }
    if h.hosts.iter().filter(|o| o.address.is_some()).count() > MAX_HOSTS {
        return Err(DecodeError::Field("hosts.count", n as u64));
    }
    Ok(h)
}

fn decode_host(total: usize, rd: &mut Reader, answers: u64) -> Result<Host, DecodeError> {
    let short = || DecodeError::Length(total);
    let len = usize::from(rd.u8().ok_or_else(short)?);
    let raw = rd.take(len).ok_or_else(short)?;
    let heard = rd.u64().ok_or_else(short)?;
    let mark = |v: u64| (v != NEVER).then_some(v);
    let failed = mark(rd.u64().ok_or_else(short)?);
    let slow = mark(rd.u64().ok_or_else(short)?);
    let streak = rd.u8().ok_or_else(short)?;
    let address = match len {
        0 => None,
        _ => Some(Address::stored(raw).ok_or(DecodeError::Field("hosts.address", len as u64))?),
    };
    if heard > answers || (address.is_none() && heard != 0) {
        return Err(DecodeError::Field("hosts.heard", heard));
    }
    if streak > 1 {
        return Err(DecodeError::Field("hosts.streak", streak.into()));
    }
    Ok(Host {
        address,
        heard,
        failed,
        slow,
        in_streak: streak == 1,
    })
}

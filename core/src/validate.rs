//! Field validation in Kubernetes' own terms, shared by the API and the config loader.
//!
//! Each check returns `Err(reason)` with a sentence fit for an API error's `details`; the
//! caller adds the field path.

/// Longest DNS-1123 subdomain (object names such as a task's).
pub const MAX_SUBDOMAIN: usize = 253;
/// Longest DNS-1123 label, label name or label value.
pub const MAX_LABEL: usize = 63;
/// Longest image reference we accept (the seed's column is VARCHAR(512)).
pub const MAX_IMAGE: usize = 512;

fn alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, starting and ending with an
/// alphanumeric, at most 253 characters.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_SUBDOMAIN {
        return Err(format!("must be at most {MAX_SUBDOMAIN} characters"));
    }
    for part in s.split('.') {
        dns_label(part).map_err(|_| {
            "must consist of lowercase letters, digits, '-' and '.', and start and end with a letter or digit"
                .to_string()
        })?;
    }
    Ok(())
}

/// A DNS-1123 label: lowercase alphanumerics and `-`, alphanumeric at both ends, ≤ 63.
/// Whether an address is on the public internet: not loopback, private (RFC 1918, unique
/// local), link-local (cloud metadata at 169.254.169.254), shared (100.64/10), unspecified,
/// multicast, broadcast or documentation; IPv4 inside IPv6 is judged as IPv4. Webhook calls
/// go only to such addresses unless an operator allows private networks.
pub fn is_public_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

pub fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.chars().all(|c| alnum_lower(c) || c == '-')
        && s.starts_with(alnum_lower)
        && s.ends_with(alnum_lower);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be at most {MAX_LABEL} lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

fn label_name(s: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(edge)
        && s.ends_with(edge)
}

/// A label (or node-selector, taint, toleration) key: `[prefix/]name`, as Kubernetes accepts.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns_subdomain(p).map_err(|e| format!("prefix {p:?} {e}"))?;
    }
    if label_name(name) {
        Ok(())
    } else {
        Err(format!(
            "name part must be 1-{MAX_LABEL} characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// A label value: empty, or a label name (≤ 63, alphanumeric at both ends).
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || label_name(s) {
        Ok(())
    } else {
        Err(format!(
            "must be empty or at most {MAX_LABEL} letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// A container image reference: `[registry[:port]/]path[:tag][@digest]`, no whitespace.
pub fn image_reference(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_IMAGE {
        return Err(format!("must be at most {MAX_IMAGE} characters"));
    }
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let valid = d.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty()
                && alg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '_' | '-'))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !valid {
            return Err("has an invalid digest (expected algorithm:hex, such as sha256:…)".into());
        }
    }
    // The tag is what follows the last ':' after the last '/'; a ':' before it is a port.
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && !t.starts_with(['.', '-']);
        if !ok {
            return Err(format!("has an invalid tag {t:?}"));
        }
    }
    let mut components = repo.split('/').peekable();
    let mut first = true;
    while let Some(c) = components.next() {
        let is_registry = first && components.peek().is_some() && (c.contains(['.', ':']) || c == "localhost");
        first = false;
        let ok = if is_registry {
            !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | ':'))
        } else {
            !c.is_empty()
                && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
                && c.starts_with(alnum_lower)
                && c.ends_with(alnum_lower)
        };
        if !ok {
            return Err(format!(
                "has an invalid path component {c:?} (lowercase letters, digits and separators '.', '_', '-')"
            ));
        }
    }
    Ok(())
}

/// An environment variable name as Kubernetes accepts it: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn env_var_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok { Ok(()) } else { Err("must be letters, digits, '_', '-' and '.', not starting with a digit".into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public_ip(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public_ip(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn task_names_follow_dns_subdomains() {
        assert!(dns_subdomain("ml-training-job").is_ok());
        assert!(dns_subdomain("a.b-c").is_ok());
        for bad in ["", "Upper", "-lead", "trail-", "has space", "a..b", &"a".repeat(254)] {
            assert!(dns_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values_follow_kubernetes() {
        for good in ["team", "berth.io/sim-duration", "kubernetes.io/os", "A_b.c-D"] {
            assert!(label_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/x", "a/", "Bad_Prefix/x", "-x", &"a".repeat(64)] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        assert!(label_value("").is_ok());
        assert!(label_value("2s").is_ok());
        assert!(label_value("has space").is_err());
        assert!(label_value("x-").is_err());
    }

    #[test]
    fn image_references_are_checked() {
        for good in [
            "busybox",
            "busybox:1.35",
            "tensorflow/tensorflow:2.13.0-gpu",
            "registry.example.com:5000/team/app:v1",
            "localhost/app",
            "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image_reference(good).is_ok(), "{good}");
        }
        for bad in ["", "Busybox", "busy box", "app:", "app:-x", "a//b", "app@sha256:xyz", "UPPER/app"] {
            assert!(image_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_var_names_are_checked() {
        assert!(env_var_name("PYTHONPATH").is_ok());
        assert!(env_var_name("my.var-1").is_ok());
        assert!(env_var_name("1ABC").is_err());
        assert!(env_var_name("A B").is_err());
        assert!(env_var_name("").is_err());
    }
}

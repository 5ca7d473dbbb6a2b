//! Which redirects `mine download` follows. Review dumps are third-party data: a URL in them may
//! redirect anywhere, so a redirect is followed only when it keeps the scheme (no https → http
//! downgrade, no `file:` or other schemes), stays within a few hops, and does not turn a request
//! to a public host into one to this machine or its private network (a dump must not make the
//! miner probe `localhost:5432` or a cloud metadata address).

use std::net::IpAddr;

use reqwest::Url;

/// Most redirects followed for one URL.
pub const MAX_REDIRECTS: usize = 5;

/// `Err(reason)` when the redirect from the chain `previous` (first = the URL asked for) to
/// `next` must not be followed.
pub fn check_redirect(previous: &[Url], next: &Url) -> Result<(), String> {
    let Some(first) = previous.first() else {
        return Ok(());
    };
    if previous.len() > MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects"));
    }
    if next.scheme() != first.scheme() {
        return Err(format!(
            "redirect from {} to {} changes the scheme",
            first.scheme(),
            next
        ));
    }
    if is_local(next) && !is_local(first) {
        return Err(format!(
            "redirect from a public host to a local address ({next})"
        ));
    }
    Ok(())
}

/// Whether the URL names this machine or a private, link-local or unspecified address.
fn is_local(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => is_local_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_local_ip(IpAddr::V6(ip)),
        None => true,
    }
}

fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local_ip(IpAddr::V4(v4)),
            None => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn same_scheme_public_redirects_within_the_cap_are_followed() {
        let start = [url("https://images.example.com/I/a.jpg")];
        assert!(check_redirect(&start, &url("https://cdn.example.net/a.jpg")).is_ok());
        let local = [url("http://127.0.0.1:8080/a.jpg")];
        assert!(check_redirect(&local, &url("http://127.0.0.1:8080/b.jpg")).is_ok());
    }

    #[test]
    fn downgrades_local_targets_and_long_chains_are_refused() {
        let start = [url("https://images.example.com/I/a.jpg")];
        for bad in [
            "http://images.example.com/I/a.jpg",
            "file:///etc/passwd",
            "https://127.0.0.1/a",
            "https://localhost:5432/",
            "https://169.254.169.254/latest/meta-data/",
            "https://10.1.2.3/a",
            "https://[::1]/a",
            "https://[::ffff:192.168.0.1]/a",
        ] {
            assert!(check_redirect(&start, &url(bad)).is_err(), "{bad}");
        }
        let chain: Vec<Url> = (0..=MAX_REDIRECTS)
            .map(|i| url(&format!("https://images.example.com/{i}")))
            .collect();
        let err = check_redirect(&chain, &url("https://images.example.com/x")).unwrap_err();
        assert!(err.contains("redirects"), "{err}");
    }
}

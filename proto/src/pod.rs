//! Pod naming rules: what a pod may be called, and the name of its host-side veth.

/// Why a pod name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid pod name {0:?}: use 1 to 63 characters of a-z, 0-9, '-', '.' and '_', starting with a letter or digit"
)]
pub struct PodNameError(pub String);

/// Pod names become netns file names and appear in logs: keep them to a safe alphabet.
pub fn validate_pod_name(name: &str) -> Result<(), PodNameError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(PodNameError(name.to_owned()))
    }
}

/// The host-side veth of a pod: `ovd` and 8 hex digits of a hash of the pod name. Fits
/// the 15-byte interface name limit whatever the pod name, and marks the device as ours.
pub fn host_veth_name(pod: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in pod.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{OWNED_IFNAME_PREFIX}{hash:08x}")
}

/// Every interface the daemon creates for pods starts with this.
pub const OWNED_IFNAME_PREFIX: &str = "ovd";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_pod_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "Web", "a/b", "a b", &"x".repeat(64)] {
            assert!(validate_pod_name(bad).is_err(), "{bad}");
        }
        let veth = host_veth_name("web-1");
        assert_eq!(veth.len(), 11);
        assert!(veth.starts_with("ovd"));
        assert_eq!(veth, host_veth_name("web-1"));
        assert_ne!(veth, host_veth_name("web-2"));
    }
}

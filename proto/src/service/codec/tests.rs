use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::gossip::sim::{NetConfig, Sim, lan_config};
use crate::service::test_support::{pod, service_object, spec, with_backends};

fn object(spec: ServiceSpec) -> ServiceObject {
    let has_np = spec.kind.has_node_ports();
    ServiceObject {
        alloc: Allocation {
            cluster_ip: spec.has_cluster_ip().then(|| {
                spec.given_cluster_ip()
                    .unwrap_or(Ipv4Addr::new(10, 96, 0, 10))
            }),
            node_ports: spec
                .ports
                .iter()
                .map(|p| has_np.then(|| p.node_port.unwrap_or(30_080)))
                .collect(),
            external_ip: None,
        },
        spec,
        created: Hlc::new(1_700_000_000_000, 3),
    }
}

/// The values stored by `writes`, as a map a reader looks parts up in.
fn store(writes: &[ObjectWrite]) -> BTreeMap<String, Vec<u8>> {
    let mut map = BTreeMap::new();
    for w in writes {
        match &w.value {
            Some(v) => map.insert(w.key.clone(), v.clone()),
            None => map.remove(&w.key),
        };
    }
    map
}

/// Reads the Service `key` back from stored values: inline, or assembled from parts.
fn read(map: &BTreeMap<String, Vec<u8>>, key: &ServiceKey) -> Option<ServiceObject> {
    let head = decode_head(map.get(&service_key(key))?).unwrap();
    match head {
        Head::Inline { object, .. } => Some(*object),
        Head::Split(h) => assemble(key, &h, |i| {
            map.get(&part_key(key, h.hash, i)).map(Vec::as_slice)
        })
        .unwrap(),
    }
}

#[test]
fn a_small_service_is_one_inline_object() {
    let o = object(spec("web"));
    let writes = service_writes(&o, Hlc(7), &[]).unwrap();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].key, "svc/default/web");
    assert!(writes[0].value.as_ref().unwrap().len() <= MAX_VALUE_LEN);
    assert_eq!(
        decode_head(writes[0].value.as_ref().unwrap()).unwrap(),
        Head::Inline {
            stamp: Hlc(7),
            object: Box::new(o)
        }
    );
}

#[test]
fn a_large_service_is_split_and_reassembled() {
    let o = object(with_backends("big", 300));
    let writes = service_writes(&o, Hlc(9), &[]).unwrap();
    // 300 backends × 5 bytes: three parts and the head, the head last.
    assert_eq!(
        writes.len(),
        4,
        "{:?}",
        writes.iter().map(|w| &w.key).collect::<Vec<_>>()
    );
    assert_eq!(writes[3].key, "svc/default/big");
    assert!(
        writes
            .iter()
            .all(|w| w.value.as_ref().unwrap().len() <= MAX_VALUE_LEN)
    );
    let Head::Split(head) = decode_head(writes[3].value.as_ref().unwrap()).unwrap() else {
        panic!("not split");
    };
    assert_eq!(head.parts, 3);
    assert_eq!(
        head.part_keys(&o.key()),
        vec![
            writes[0].key.clone(),
            writes[1].key.clone(),
            writes[2].key.clone()
        ]
    );
    assert_eq!(
        parse_key(&writes[1].key),
        Some(ObjectKey::Part {
            service: o.key(),
            hash: head.hash,
            index: 1
        })
    );
    let map = store(&writes);
    assert_eq!(read(&map, &o.key()), Some(o.clone()));
    // Any part missing: nothing yet.
    for (missing, part) in writes[..3].iter().enumerate() {
        let mut partial = map.clone();
        partial.remove(&part.key);
        assert_eq!(read(&partial, &o.key()), None, "part {missing} missing");
    }
}

#[test]
fn a_new_version_replaces_the_parts_of_the_old_one() {
    let old = object(with_backends("big", 300));
    let first = service_writes(&old, Hlc(10), &[]).unwrap();
    let Head::Split(old_head) = decode_head(first[3].value.as_ref().unwrap()).unwrap() else {
        panic!("not split");
    };
    let mut new = old.clone();
    new.spec.backends.pop();
    let second = service_writes(&new, Hlc(11), &old_head.part_keys(&old.key())).unwrap();
    let map = store(&[first, second.clone()].concat());
    assert_eq!(read(&map, &new.key()), Some(new.clone()));
    // Only the new version's parts and its head are left.
    assert_eq!(map.len(), 4, "{:?}", map.keys().collect::<Vec<_>>());
    assert_eq!(second.iter().filter(|w| w.value.is_none()).count(), 3);
    // The same content written again gets parts of its own: a writer deleting the old
    // version's parts never deletes those of a concurrent equal write.
    let again = service_writes(&new, Hlc(12), &[]).unwrap();
    assert!(again.iter().all(|w| {
        !second
            .iter()
            .any(|s| s.key == w.key && s.key.contains("/big/"))
    }));
}

#[test]
fn parts_of_another_version_or_service_are_refused() {
    let a = object(with_backends("big", 300));
    let wa = service_writes(&a, Hlc(10), &[]).unwrap();
    let Head::Split(ha) = decode_head(wa[3].value.as_ref().unwrap()).unwrap() else {
        panic!()
    };
    // A part from another version under the right index.
    let mut b = a.clone();
    b.spec.backends.pop();
    let wb = service_writes(&b, Hlc(11), &[]).unwrap();
    let mixed = |i: u16| {
        Some(if i == 1 {
            wb[1].value.as_deref().unwrap()
        } else {
            wa[usize::from(i)].value.as_deref().unwrap()
        })
    };
    assert!(assemble(&a.key(), &ha, mixed).is_err());
    // The right parts under the wrong Service's key.
    let other = ServiceKey::new("default", "other");
    let parts = |i: u16| Some(wa[usize::from(i)].value.as_deref().unwrap());
    assert!(matches!(
        assemble(&other, &ha, parts),
        Err(CodecError::WrongKey { .. })
    ));
}

#[test]
fn a_spec_with_300_backends_travels_through_gossip() {
    let mut sim = Sim::new(
        40,
        2,
        lan_config(),
        NetConfig::default(),
        Duration::from_secs(1),
    );
    sim.run_until_pred(
        Duration::from_secs(30),
        Duration::from_millis(100),
        Sim::converged,
    )
    .expect("join");
    let o = object(with_backends("big", 300));
    let writes = sim.with(0, |g, now| {
        let stamp = g.stamp(now);
        let writes = service_writes(&o, stamp, &[]).unwrap();
        for w in &writes {
            g.set_object(now, &w.key, w.value.clone()).unwrap();
        }
        writes
    });
    assert!(writes.len() > 1);
    let key = o.key();
    let took = sim
        .run_until_pred(Duration::from_secs(10), Duration::from_millis(10), |s| {
            let map: BTreeMap<String, Vec<u8>> = s
                .gossip(1)
                .objects()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect();
            read(&map, &key).is_some()
        })
        .expect("assembled on the other node");
    let map: BTreeMap<String, Vec<u8>> = sim
        .gossip(1)
        .objects()
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
    assert_eq!(read(&map, &key), Some(o));
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn objects_that_do_not_fit_their_spec_are_refused() {
    let good = object(spec("web"));
    let mut o = good.clone();
    o.alloc.cluster_ip = None;
    assert!(matches!(o.encode(), Err(CodecError::Allocation(_))));
    let mut o = good.clone();
    o.alloc.node_ports = vec![Some(30_000)];
    assert!(matches!(o.encode(), Err(CodecError::Allocation(_))));
    let mut o = good.clone();
    o.spec.cluster_ip = Some(ClusterIp::Ip(Ipv4Addr::new(10, 96, 0, 1)));
    assert!(matches!(o.encode(), Err(CodecError::Allocation(_))));
    let mut o = good.clone();
    o.spec.ports[0].port = 0;
    assert!(matches!(o.encode(), Err(CodecError::Spec(_))));
    let mut o = good;
    o.alloc.external_ip = Some(Ipv4Addr::new(192, 0, 2, 1));
    assert!(matches!(o.encode(), Err(CodecError::Allocation(_))));
}

#[test]
fn the_largest_service_fits_the_part_limit() {
    // Every limit at once: 64 ports, 16 selector labels of the longest keys… and since
    // selector and backends exclude each other, 1000 backends on another.
    let mut s = spec("x");
    s.ports = (0..64u16)
        .map(|i| ServicePort {
            name: format!("{:a>15}", i),
            target_port: Some(1),
            ..crate::service::test_support::port(i + 1)
        })
        .collect();
    s.selector = (0..16)
        .map(|i| {
            let prefix = [
                &"p".repeat(63)[..],
                &"p".repeat(63),
                &"p".repeat(63),
                &"p".repeat(61),
            ]
            .join(".");
            (format!("{prefix}/{:b>62}{i:x}", "k"), "v".repeat(63))
        })
        .collect();
    s.name = "n".repeat(63);
    s.namespace = "n".repeat(63);
    let o = object(s);
    let bytes = o.encode().unwrap();
    assert!(bytes.len() <= MAX_OBJECT_LEN, "{}", bytes.len());
    let mut b = with_backends("x", 1000);
    b.ports = o.spec.ports.clone();
    let o = object(b);
    let bytes = o.encode().unwrap();
    assert!(bytes.len() <= MAX_OBJECT_LEN, "{}", bytes.len());
    let writes = service_writes(&o, Hlc(1), &[]).unwrap();
    assert!(writes.len() <= usize::from(MAX_PARTS) + 1);
    assert_eq!(read(&store(&writes), &o.key()), Some(o));
}

#[test]
fn keys_are_built_and_parsed() {
    let k = ServiceKey::new("prod", "web");
    assert_eq!(service_key(&k), "svc/prod/web");
    assert_eq!(
        parse_key("svc/prod/web"),
        Some(ObjectKey::Service(k.clone()))
    );
    assert_eq!(part_key(&k, 0xab, 2), "svc/prod/web/00000000000000ab/2");
    assert_eq!(
        parse_key("svc/prod/web/00000000000000ab/2"),
        Some(ObjectKey::Part {
            service: k,
            hash: 0xab,
            index: 2
        })
    );
    assert_eq!(
        pod_key("node-1", "db-0").as_deref(),
        Some("pod/node-1/db-0")
    );
    assert_eq!(
        parse_key("pod/node-1/db-0"),
        Some(ObjectKey::Pod {
            node: "node-1".into(),
            pod: "db-0".into()
        })
    );
    assert_eq!(pod_key("a/b", "db"), None);
    assert_eq!(pod_key("node-1", "Db"), None);
    for bad in [
        "svc/prod",
        "svc/Prod/web",
        "svc/prod/web/",
        "svc/prod/web/ab/2",
        "svc/prod/web/00000000000000AB/2",
        "svc/prod/web/00000000000000ab/02",
        "svc/prod/web/00000000000000ab/9999",
        "svc/prod/web/00000000000000ab/1/x",
        "pod/node-1",
        "pod//db",
        "pod/node-1/db/x",
        "other/x",
    ] {
        assert_eq!(parse_key(bad), None, "{bad}");
    }
}

#[test]
fn pod_endpoints_round_trip_and_labels_are_bounded() {
    let p = pod(
        [10, 244, 1, 5],
        &[("app", "web"), ("example.com/tier", "front")],
    );
    let bytes = p.encode().unwrap();
    assert_eq!(PodEndpoint::decode(&bytes).unwrap(), p);
    let bad = pod([10, 244, 1, 5], &[("app", "web app")]);
    assert!(matches!(
        bad.encode(),
        Err(CodecError::Labels(LabelError::Value { .. }))
    ));
    let bad = pod([10, 244, 1, 5], &[("-app", "web")]);
    assert!(matches!(
        bad.encode(),
        Err(CodecError::Labels(LabelError::Key { .. }))
    ));
    let many: BTreeMap<String, String> =
        (0..33).map(|i| (format!("k{i}"), String::new())).collect();
    assert_eq!(validate_pod_labels(&many), Err(LabelError::TooMany(33)));
    // Long labels: fine one by one, too much for one object together.
    let long: BTreeMap<String, String> = (0..10)
        .map(|i| (format!("{:k>62}{i}", ""), "v".repeat(63)))
        .collect();
    assert!(matches!(
        validate_pod_labels(&long),
        Err(LabelError::TooLarge(_))
    ));
    let fits: BTreeMap<String, String> = (0..5)
        .map(|i| (format!("{:k>62}{i}", ""), "v".repeat(63)))
        .collect();
    assert_eq!(validate_pod_labels(&fits), Ok(()));
    assert!(
        PodEndpoint {
            ip: p.ip,
            labels: fits
        }
        .encode()
        .unwrap()
        .len()
            <= MAX_VALUE_LEN
    );
}

#[test]
fn unknown_versions_and_kinds_are_refused() {
    let o = object(spec("web"));
    let mut v = service_writes(&o, Hlc(1), &[]).unwrap()[0]
        .value
        .clone()
        .unwrap();
    v[0] = 2;
    assert_eq!(decode_head(&v), Err(CodecError::Version(2)));
    v[0] = CODEC_VERSION;
    v[1] = TAG_POD;
    assert_eq!(decode_head(&v), Err(CodecError::Tag(TAG_POD)));
    let p = pod([10, 0, 0, 1], &[]).encode().unwrap();
    assert_eq!(decode_head(&p), Err(CodecError::Tag(TAG_POD)));
    v[1] = TAG_INLINE;
    assert_eq!(PodEndpoint::decode(&v), Err(CodecError::Tag(TAG_INLINE)));
}

proptest! {
    #[test]
    fn service_objects_round_trip(o in service_object(), stamp in any::<u64>()) {
        prop_assert_eq!(o.spec.validate(&ServiceSettings::unrestricted()), Ok(()));
        let bytes = o.encode().unwrap();
        prop_assert_eq!(ServiceObject::decode(&bytes).unwrap(), o.clone());
        let writes = service_writes(&o, Hlc(stamp), &[]).unwrap();
        prop_assert!(writes.iter().all(|w| w.value.as_ref().is_some_and(|v| v.len() <= MAX_VALUE_LEN)));
        prop_assert!(writes.iter().all(|w| w.key.len() <= MAX_KEY_LEN));
        prop_assert_eq!(read(&store(&writes), &o.key()), Some(o));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        let _ = decode_head(&bytes);
        let _ = decode_part(&bytes);
        let _ = ServiceObject::decode(&bytes);
        let _ = PodEndpoint::decode(&bytes);
        let mut with_header = vec![CODEC_VERSION, TAG_INLINE];
        with_header.extend_from_slice(&bytes);
        let _ = decode_head(&with_header);
        with_header[1] = TAG_POD;
        let _ = PodEndpoint::decode(&with_header);
    }

    #[test]
    fn mutated_objects_never_panic_and_decode_only_to_valid_objects(
        o in service_object(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let original = o.encode().unwrap();
        let short = &original[..cut.index(original.len())];
        prop_assert!(ServiceObject::decode(short).is_err());
        let mut bytes = original.clone();
        for (at, byte) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *byte;
        }
        if let Ok(decoded) = ServiceObject::decode(&bytes) {
            // Whatever decodes is something a node could have written itself.
            prop_assert_eq!(decoded.spec.validate(&ServiceSettings::unrestricted()), Ok(()));
            prop_assert!(decoded.check_allocation().is_ok());
            prop_assert_eq!(decoded.encode().unwrap(), bytes.clone());
        }
    }

    #[test]
    fn mutated_parts_never_assemble_into_something_else(
        o in service_object(),
        extra in 200u32..400,
        part in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut big = o;
        if big.spec.kind != ServiceType::ExternalName {
            big.spec.selector.clear();
            big.spec.backends = with_backends("x", extra).backends;
            for b in &mut big.spec.backends {
                b.port = None;
            }
        }
        let writes = service_writes(&big, Hlc(5), &[]).unwrap();
        let mut map = store(&writes);
        let parts: Vec<String> = map.keys().filter(|k| k.matches('/').count() == 4).cloned().collect();
        if !parts.is_empty() {
            let k = &parts[part.index(parts.len())];
            let v = map.get_mut(k).unwrap();
            let i = at.index(v.len());
            let changed = v[i] != byte;
            v[i] = byte;
            let head = decode_head(&map[&service_key(&big.key())]).unwrap();
            let Head::Split(h) = head else { panic!() };
            let got = assemble(&big.key(), &h, |i| map.get(&part_key(&big.key(), h.hash, i)).map(Vec::as_slice));
            if changed {
                prop_assert!(got.is_err(), "{got:?}");
            } else {
                prop_assert_eq!(got, Ok(Some(big)));
            }
        }
    }

    #[test]
    fn pod_endpoints_round_trip(
        ip in 1u32..0x7f00_0000,
        labels in proptest::collection::btree_map("[a-z]{1,10}(/[a-z]{1,5})?", "[A-Za-z0-9]{0,10}", 0..8),
    ) {
        let p = PodEndpoint { ip: Ipv4Addr::from(ip), labels };
        let bytes = p.encode().unwrap();
        prop_assert!(bytes.len() <= MAX_VALUE_LEN);
        prop_assert_eq!(PodEndpoint::decode(&bytes).unwrap(), p);
    }
}

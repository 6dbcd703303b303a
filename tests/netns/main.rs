//! Namespace integration tests: real clusters built by the lab in network namespaces on
//! this host, checked the way a user would check them. Each test has its own lab (unique
//! name), torn down by a guard even when the test panics.
//!
//! They need root. Without it every test is reported as "ignored" and a banner says why;
//! nothing passes silently. CI runs as root.

mod cluster;
mod faults;
mod gossip;
mod interop;
mod pki;
mod pmtu;
mod quic;
mod relay;
mod services;
mod support;

use libtest_mimic::{Arguments, Trial};

type TestFn = fn() -> anyhow::Result<()>;

/// Every namespace test, by name.
const ROOT_TESTS: &[(&str, TestFn)] = &[
    (
        "host_gw_within_a_segment_bypasses_the_daemon",
        cluster::host_gw_within_a_segment_bypasses_the_daemon,
    ),
    (
        "udp_across_segments_ping_and_50mb_transfer",
        cluster::udp_across_segments_ping_and_50mb_transfer,
    ),
    (
        "mixed_offloads_on_one_link_carry_tcp_both_ways",
        cluster::mixed_offloads_on_one_link_carry_tcp_both_ways,
    ),
    (
        "mtu_1500_pods_bulk_transfer_and_frag_needed",
        cluster::mtu_1500_pods_bulk_transfer_and_frag_needed,
    ),
    (
        "masquerade_outside_cluster_pod_source_kept_inside",
        cluster::masquerade_outside_cluster_pod_source_kept_inside,
    ),
    (
        "pods_get_persistent_addresses_and_namespaces",
        cluster::pods_get_persistent_addresses_and_namespaces,
    ),
    (
        "lab_check_reports_paths_and_ps_json",
        cluster::lab_check_reports_paths_and_ps_json,
    ),
    (
        "pmtu_a_1400_byte_link_is_learned_and_bulk_tcp_completes",
        pmtu::a_1400_byte_link_is_learned_and_bulk_tcp_completes,
    ),
    (
        "pmtu_icmp_dropped_path_mtu_is_found_by_probes",
        pmtu::icmp_dropped_path_mtu_is_found_by_probes,
    ),
    (
        "quic_remote_zone_pods_reach_the_others_over_quic",
        quic::remote_zone_pods_reach_the_others_over_quic,
    ),
    (
        "quic_pair_requiring_encryption_without_quic_gets_no_cleartext",
        quic::pair_requiring_encryption_without_quic_gets_no_cleartext,
    ),
    (
        "quic_ladder_moves_to_quic_when_the_tunnel_port_is_blocked_and_returns",
        quic::ladder_moves_to_quic_when_the_tunnel_port_is_blocked_and_returns,
    ),
    (
        "quic_a_1400_byte_link_on_the_quic_path_still_carries_bulk_tcp",
        quic::a_1400_byte_link_on_the_quic_path_still_carries_bulk_tcp,
    ),
    (
        "quic_a_node_with_a_bad_certificate_cannot_bring_up_a_tunnel_and_is_counted",
        quic::a_node_with_a_bad_certificate_cannot_bring_up_a_tunnel_and_is_counted,
    ),
    (
        "quic_a_revocation_closes_the_revoked_nodes_tunnels_within_the_bound",
        quic::a_revocation_closes_the_revoked_nodes_tunnels_within_the_bound,
    ),
    (
        "quic_a_renewed_certificate_is_advertised_after_sighup_and_keeps_the_tunnel",
        quic::a_renewed_certificate_is_advertised_after_sighup_and_keeps_the_tunnel,
    ),
    (
        "quic_tcpdump_sees_no_pod_payload_on_a_quic_path_but_sees_it_on_udp",
        quic::tcpdump_sees_no_pod_payload_on_a_quic_path_but_sees_it_on_udp,
    ),
    (
        "relay_a_cut_pair_moves_onto_a_relay_and_back_after_the_heal",
        relay::a_cut_pair_moves_onto_a_relay_and_back_after_the_heal,
    ),
    (
        "kernel_vxlan_node_interoperates_both_ways",
        interop::kernel_vxlan_node_interoperates_both_ways,
    ),
    (
        "kernel_vxlan_node_on_the_same_link_with_offloads",
        interop::kernel_vxlan_node_on_the_same_link_with_offloads,
    ),
    (
        "kernel_vxlan_node_on_the_same_link_without_our_offloads",
        interop::kernel_vxlan_node_on_the_same_link_without_our_offloads,
    ),
    (
        "garbage_datagrams_are_dropped_and_counted",
        faults::garbage_datagrams_are_dropped_and_counted,
    ),
    (
        "kill_9_and_restart_keeps_pods_and_host_gw",
        faults::kill_9_and_restart_keeps_pods_and_host_gw,
    ),
    (
        "leave_removes_only_what_is_ours",
        faults::leave_removes_only_what_is_ours,
    ),
    (
        "sigterm_during_start_up_stops_cleanly",
        faults::sigterm_during_start_up_stops_cleanly,
    ),
    (
        "on_exit_keep_leaves_the_data_path",
        faults::on_exit_keep_leaves_the_data_path,
    ),
    (
        "stop_is_not_leave_pods_keep_talking",
        faults::stop_is_not_leave_pods_keep_talking,
    ),
    (
        "a_crashed_daemon_costs_no_host_gw_reply",
        faults::a_crashed_daemon_costs_no_host_gw_reply,
    ),
    (
        "a_restart_costs_no_host_gw_reply",
        faults::a_restart_costs_no_host_gw_reply,
    ),
    (
        "a_hand_over_to_a_new_process_loses_at_most_100_ms",
        faults::a_hand_over_to_a_new_process_loses_at_most_100_ms,
    ),
    (
        "a_rolling_restart_keeps_an_iperf3_stream_across_the_tunnel",
        faults::a_rolling_restart_keeps_an_iperf3_stream_across_the_tunnel,
    ),
    (
        "a_failed_start_leaves_the_running_data_path",
        faults::a_failed_start_leaves_the_running_data_path,
    ),
    (
        "pods_cannot_reach_tunnel_or_gossip_ports",
        faults::pods_cannot_reach_tunnel_or_gossip_ports,
    ),
    (
        "gossip_five_nodes_join_from_one_seed_and_survive_kill_9",
        gossip::five_nodes_join_from_one_seed_and_survive_kill_9,
    ),
    (
        "gossip_a_node_whose_link_goes_down_loses_its_routes_and_gets_them_back",
        gossip::a_node_whose_link_goes_down_loses_its_routes_and_gets_them_back,
    ),
    (
        "gossip_partition_for_30s_then_heal_restores_the_mesh",
        gossip::partition_for_30s_then_heal_restores_the_mesh,
    ),
    (
        "gossip_graceful_leave_is_seen_at_once",
        gossip::graceful_leave_is_seen_at_once,
    ),
    (
        "gossip_wrong_key_and_forged_gossip_are_refused_and_counted",
        gossip::wrong_key_and_forged_gossip_are_refused_and_counted,
    ),
    (
        "gossip_key_rotation_keeps_the_cluster_up",
        gossip::key_rotation_keeps_the_cluster_up,
    ),
    (
        "gossip_static_subnet_wins_and_the_claimer_moves_its_pods",
        gossip::static_subnet_wins_and_the_claimer_moves_its_pods,
    ),
    (
        "pod_whose_namespace_went_is_made_again_at_start",
        faults::a_pod_whose_namespace_went_is_made_again_at_start,
    ),
    (
        "service_clusterip_reaches_every_backend_from_every_node_evenly",
        services::clusterip_reaches_every_backend_from_every_node_evenly,
    ),
    (
        "service_least_conn_prefers_the_idle_backend",
        services::least_conn_prefers_the_idle_backend,
    ),
    (
        "service_a_killed_backend_costs_no_connection",
        services::a_killed_backend_costs_no_connection,
    ),
    (
        "service_fifty_mb_through_the_vip_intact_both_ways",
        services::fifty_mb_through_the_vip_intact_both_ways,
    ),
    (
        "service_udp_survives_an_endpoint_change",
        services::udp_service_survives_an_endpoint_change,
    ),
    (
        "service_node_port_from_a_client_on_the_underlay",
        services::node_port_from_a_client_on_the_underlay,
    ),
    (
        "service_load_balancer_ip_fails_over_when_its_holder_dies",
        services::load_balancer_ip_fails_over_when_its_holder_dies,
    ),
    (
        "service_dns_answers_from_inside_pods",
        services::dns_answers_from_inside_pods,
    ),
    (
        "service_added_on_one_node_is_served_by_the_farthest_within_1s",
        services::a_service_added_on_one_node_is_served_by_the_farthest_within_1s,
    ),
    (
        "service_bad_spec_is_refused_and_running_services_are_untouched",
        services::a_bad_spec_is_refused_and_running_services_are_untouched,
    ),
    (
        "service_kernel_dataplane_dnats_the_vip_without_the_proxy",
        services::kernel_dataplane_dnats_the_vip_without_the_proxy,
    ),
    (
        "service_endpoints_of_a_node_whose_daemon_is_down_stay_in_rotation",
        services::endpoints_of_a_node_whose_daemon_is_down_stay_in_rotation,
    ),
];

/// Tests that need no privileges.
const USER_TESTS: &[(&str, TestFn)] = &[
    (
        "check_reports_config_errors",
        support::check_reports_config_errors,
    ),
    (
        "pki_ca_init_and_cert_issue_write_private_keys_and_refuse_mistakes",
        pki::ca_init_and_cert_issue_write_private_keys_and_refuse_mistakes,
    ),
];

fn main() {
    let args = Arguments::from_args();
    let root = nix::unistd::geteuid().is_root();
    if !root {
        use std::io::Write;
        let _ = std::io::stderr().write_all(
            b"\n*** netns tests IGNORED: they need root (network namespaces, veth, routes).\n\
              *** Run `sudo cargo test --workspace` (CI runs them as root).\n\n",
        );
    }
    let trial = |(name, f): &(&'static str, TestFn)| {
        let f = *f;
        Trial::test(*name, move || support::with_logs(f).map_err(Into::into))
    };
    let mut trials: Vec<Trial> = ROOT_TESTS
        .iter()
        .map(|t| trial(t).with_ignored_flag(!root))
        .collect();
    trials.extend(USER_TESTS.iter().map(trial));
    libtest_mimic::run(&args, trials).exit();
}

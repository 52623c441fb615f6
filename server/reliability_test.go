package server

// TestReliability proves every item of RELIABILITY.md (1–46) with one
// subtest named NN_short_name. Each adversarial subtest runs its own server
// with a healthy control client that must still receive a chat message after
// the attack, and waits until fds and goroutines are back to the baseline.
// Items that need a real process (fd exhaustion under ulimit, kill -9 of a
// client, SIGTERM with 10,000 clients, a second signal) are proven again in
// internal/e2e/reliability_process_test.go.

import (
	"testing"
)

func TestReliability(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"01_malformed_upgrade_400", rel01MalformedUpgrade},
		{"02_wrong_path_or_plain_get", rel02WrongPath},
		{"03_cross_site_origin_403", rel03Origin},
		{"04_slowloris_handshake_deadline", rel04Slowloris},
		{"05_oversized_handshake_431", rel05OversizedHandshake},
		{"06_handshake_and_frame_in_one_write", rel06Pipelined},
		{"07_no_deflate_rsv1_1002", rel07NoDeflate},
		{"08_max_conns_503", rel08MaxConns},
		{"09_unmasked_frame_1002", rel09Unmasked},
		{"10_rsv_and_reserved_opcodes_1002", rel10RSVOpcodes},
		{"11_bad_control_frames_1002", rel11BadControl},
		{"12_bad_continuation_1002", rel12BadContinuation},
		{"13_ping_between_fragments_and_ping_flood", rel13Pings},
		{"14_invalid_utf8_1007", rel14UTF8},
		{"15_binary_frame_1003", rel15Binary},
		{"16_huge_declared_length_1009", rel16HugeLength},
		{"17_10MiB_frame_1009", rel17TenMiB},
		{"18_fragment_cap_1009", rel18FragmentCap},
		{"19_close_handshake", rel19Close},
		{"20_join_not_an_object", rel20JoinNotObject},
		{"21_bad_username", rel21BadUsername},
		{"22_reserved_username", rel22Reserved},
		{"23_long_username_not_logged", rel23LongUsername},
		{"24_control_and_format_chars", rel24ControlChars},
		{"25_duplicate_username", rel25Duplicate},
		{"26_silent_after_upgrade_join_timeout", rel26JoinTimeout},
		{"27_bad_messages_after_join_error_budget", rel27ErrorBudget},
		{"28_content_over_limit", rel28ContentLimit},
		{"29_no_impersonation_after_join", rel29Impersonation},
		{"30_html_is_data", rel30HTML},
		{"31_flood_rate_limited", rel31Flood},
		{"32_ordering_per_sender", rel32Ordering},
		{"33_slow_consumer_evicted", rel33SlowConsumer},
		{"34_idle_clients_memory_and_keepalive", rel34Idle},
		{"35_reconnect_storm_coalesced", rel35Storm},
		{"36_accept_emfile_backoff", rel36EMFILE},
		{"37_pool_saturated_sheds_503", rel37PoolSaturated},
		{"38_fd_limit_refuses_cleanly", rel38FDLimit},
		{"39_client_vanishes_mid_frame", rel39MidFrame},
		{"40_half_open_peer_dropped", rel40HalfOpen},
		{"41_peer_reset_during_broadcast", rel41ResetDuringBroadcast},
		{"42_handler_panic_1011", rel42Panic},
		{"43_close_causes_at_once_one_cleanup", rel43CloseRace},
		{"44_shutdown_1001_no_notices", rel44Shutdown},
		{"45_admission_stops_at_signal", rel45Admission},
		{"46_stuck_clients_cannot_delay_exit", rel46Stuck},
	} {
		t.Run(tc.name, tc.fn)
	}
}

const wsKey = "dGhlIHNhbXBsZSBub25jZQ=="

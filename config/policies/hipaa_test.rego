# Tests of hipaa.rego, one or more per condition. portcullis runs them from
# its Rust test suite (src/verdict/tests.rs) with the regorus engine; the OPA
# differential test (tests/policy_differential.rs) runs them in Go OPA too.
# The service itself never loads *_test.rego files.
package deploy.hipaa

import rego.v1

fixture_now := 1772366400000000000 # 2026-03-01T12:00:00Z

fixture_digest := "sha256:1111111111111111111111111111111111111111111111111111111111111111"

fixture_data := {
	"approvers": {"production": ["octocat", "hubot"], "staging": ["octocat"]},
	"signers": {"production": "awskms:///alias/hipaa-production-cosign", "staging": "awskms:///alias/hipaa-staging-cosign"},
}

fixture_input := {
	"evidence": {
		"scans": {
			"sast": {"tool": "semgrep", "timestamp": "2026-03-01T10:00:00Z", "critical": 0, "high": 2},
			"container": {"tool": "trivy", "timestamp": "2026-03-01T10:05:00Z", "image_digest": fixture_digest, "critical": 0, "high": 1},
			"iac": {"tools": ["tfsec", "checkov"], "timestamp": "2026-03-01T10:10:00Z", "critical": 0, "high": 0},
			"secrets": {"tool": "gitleaks", "timestamp": "2026-03-01T10:00:00Z", "findings": 0},
			"dependencies": {"tool": "osv-scanner", "timestamp": "2026-03-01T09:00:00Z", "critical": 1, "high": 4},
		},
		"artifact": {
			"digest": fixture_digest,
			"cosign_verified": true,
			"signed_by": "awskms:///alias/hipaa-production-cosign",
			"target_environment": "production",
		},
	},
	"context": {"environment": "production", "actor": "octocat", "sha": "0123456789abcdef0123456789abcdef01234567"},
}

# The input with `patch` merged into it (objects merged recursively).
patched(patch) := object.union(fixture_input, patch)

allow_of(inp) := result if {
	result := allow with input as inp with data.approvers as fixture_data.approvers with data.signers as fixture_data.signers with time.now_ns as fixture_now
}

deny_of(inp) := result if {
	result := deny with input as inp with data.approvers as fixture_data.approvers with data.signers as fixture_data.signers with time.now_ns as fixture_now
}

scan_patch(name, fields) := {"evidence": {"scans": {name: fields}}}

artifact_patch(fields) := {"evidence": {"artifact": fields}}

# Denied with exactly these reasons.
denied_with(inp, reasons) if {
	allow_of(inp) == false
	deny_of(inp) == reasons
}

# --- the happy path ------------------------------------------------------------

test_fresh_clean_signed_approved_allows if {
	allow_of(fixture_input) == true
	count(deny_of(fixture_input)) == 0
}

test_second_approver_allows if {
	allow_of(patched({"context": {"actor": "hubot"}})) == true
}

test_dependencies_criticals_do_not_block if {
	allow_of(patched(scan_patch("dependencies", {"critical": 9}))) == true
}

test_exactly_24h_old_is_fresh if {
	allow_of(patched(scan_patch("sast", {"timestamp": "2026-02-28T12:00:00Z"}))) == true
}

test_offset_timestamps_are_compared_as_instants if {
	# 13:30+02:00 is 11:30Z: fresh.
	allow_of(patched(scan_patch("iac", {"timestamp": "2026-03-01T13:30:00+02:00"}))) == true
}

test_small_clock_skew_is_tolerated if {
	allow_of(patched(scan_patch("container", {"timestamp": "2026-03-01T12:04:59Z"}))) == true
}

# --- freshness: every scan within 24 h -------------------------------------------

test_stale_container_denies if {
	denied_with(
		patched(scan_patch("container", {"timestamp": "2026-02-28T11:59:59Z"})),
		{"container: scan is older than 24h"},
	)
}

test_stale_sast_denies if {
	denied_with(
		patched(scan_patch("sast", {"timestamp": "2026-02-27T12:00:00Z"})),
		{"sast: scan is older than 24h"},
	)
}

test_stale_iac_denies if {
	denied_with(
		patched(scan_patch("iac", {"timestamp": "2026-02-28T11:00:00.5Z"})),
		{"iac: scan is older than 24h"},
	)
}

test_stale_secrets_denies if {
	denied_with(
		patched(scan_patch("secrets", {"timestamp": "2026-01-01T00:00:00Z"})),
		{"secrets: scan is older than 24h"},
	)
}

test_stale_dependencies_denies if {
	denied_with(
		patched(scan_patch("dependencies", {"timestamp": "2026-02-28T11:59:59.999999999Z"})),
		{"dependencies: scan is older than 24h"},
	)
}

test_future_scan_denies if {
	denied_with(
		patched(scan_patch("sast", {"timestamp": "2026-03-01T12:05:01Z"})),
		{"sast: scan timestamp is in the future"},
	)
}

test_malformed_timestamp_denies if {
	denied_with(
		patched(scan_patch("container", {"timestamp": "yesterday"})),
		{"container: timestamp is not RFC 3339"},
	)
}

test_missing_scan_denies if {
	inp := json.remove(fixture_input, ["evidence/scans/iac"])
	denied_with(inp, {"iac: scan summary is missing"})
}

# The reference's defect: with its two OR-ed scan_evidence_valid bodies,
# stale evidence with zero counts passed. Both must hold.
test_stale_evidence_with_zero_counts_denies if {
	inp := patched(scan_patch("container", {"timestamp": "2026-02-20T00:00:00Z", "critical": 0}))
	not scan_evidence_valid with input as inp with time.now_ns as fixture_now
	allow_of(inp) == false
}

# ... and fresh evidence with critical findings passed too.
test_fresh_evidence_with_criticals_denies if {
	inp := patched(scan_patch("container", {"critical": 1}))
	not scan_evidence_valid with input as inp with time.now_ns as fixture_now
	allow_of(inp) == false
}

# --- zero critical findings and zero secrets ---------------------------------------

test_container_criticals_deny if {
	denied_with(patched(scan_patch("container", {"critical": 2})), {"container: 2 critical CVEs"})
}

test_one_container_critical_is_singular if {
	denied_with(patched(scan_patch("container", {"critical": 1})), {"container: 1 critical CVE"})
}

test_sast_criticals_deny if {
	denied_with(patched(scan_patch("sast", {"critical": 3})), {"sast: 3 critical findings"})
}

test_iac_criticals_deny if {
	denied_with(patched(scan_patch("iac", {"critical": 1})), {"iac: 1 critical misconfiguration"})
}

test_high_findings_do_not_block if {
	allow_of(patched(scan_patch("container", {"high": 40}))) == true
}

test_secrets_deny if {
	denied_with(patched(scan_patch("secrets", {"findings": 1})), {"secrets: 1 secret found"})
}

test_several_secrets_deny if {
	denied_with(patched(scan_patch("secrets", {"findings": 4})), {"secrets: 4 secrets found"})
}

test_missing_critical_count_denies if {
	inp := json.remove(fixture_input, ["evidence/scans/sast/critical"])
	denied_with(inp, {"sast: critical count is missing"})
}

# --- the scanned image is the artifact -----------------------------------------------

test_scanned_image_other_than_artifact_denies if {
	other := "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	denied_with(
		patched(scan_patch("container", {"image_digest": other})),
		{sprintf("container: scanned image %s is not the artifact %s", [other, fixture_digest])},
	)
}

# --- signature: cosign verified by the expected signer -------------------------------

test_unverified_signature_denies if {
	denied_with(patched(artifact_patch({"cosign_verified": false})), {"artifact: not verified by cosign"})
}

test_wrong_signer_denies if {
	denied_with(
		patched(artifact_patch({"signed_by": "awskms:///alias/hipaa-staging-cosign"})),
		{"artifact: signed by awskms:///alias/hipaa-staging-cosign, expected awskms:///alias/hipaa-production-cosign"},
	)
}

test_no_signer_configured_denies if {
	inp := patched(artifact_patch({"target_environment": "sandbox"}))
	sandbox := object.union(inp, {"context": {"environment": "sandbox"}})
	approvers := {"sandbox": ["octocat"]}
	not allow with input as sandbox with data.approvers as approvers with data.signers as fixture_data.signers with time.now_ns as fixture_now
	reasons := deny with input as sandbox with data.approvers as approvers with data.signers as fixture_data.signers with time.now_ns as fixture_now
	reasons == {"artifact: no expected signer configured for sandbox"}
}

# --- approver authorized for the target environment ------------------------------------

test_unlisted_actor_denies if {
	denied_with(
		patched({"context": {"actor": "mallory"}}),
		{"approver: mallory is not an approver for production"},
	)
}

test_approver_of_another_environment_only_denies if {
	inp := patched({"context": {"environment": "staging"}, "evidence": {"artifact": {
		"target_environment": "staging",
		"signed_by": "awskms:///alias/hipaa-staging-cosign",
	}}})
	allow_of(inp) == true
	denied_with(object.union(inp, {"context": {"actor": "hubot"}}), {"approver: hubot is not an approver for staging"})
}

test_missing_actor_denies if {
	inp := json.remove(fixture_input, ["context/actor"])
	denied_with(inp, {"approver: no actor in the context"})
}

# --- the artifact was built for the target -----------------------------------------------

test_artifact_for_another_environment_denies if {
	denied_with(
		patched(artifact_patch({"target_environment": "staging"})),
		{"artifact: built for staging, not production"},
	)
}

# --- several failures are all named ---------------------------------------------------

test_every_failure_is_named if {
	inp := patched({
		"evidence": {
			"scans": {"container": {"critical": 2}, "sast": {"timestamp": "2026-02-01T00:00:00Z"}},
			"artifact": {"cosign_verified": false},
		},
		"context": {"actor": "mallory"},
	})
	denied_with(inp, {
		"approver: mallory is not an approver for production",
		"artifact: not verified by cosign",
		"container: 2 critical CVEs",
		"sast: scan is older than 24h",
	})
}

test_empty_input_denies if {
	allow_of({}) == false
	count(deny_of({})) > 0
}

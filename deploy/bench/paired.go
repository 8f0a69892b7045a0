package bench

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// This file compares targets round by round. The machine's speed drifts between rounds by
// more than the targets differ: in one run direct's logins/s went 818, 930, 1 269 over its
// three rounds. A ratio of two medians taken from different rounds carries that drift (that
// run's medians gave imapgate 0.97× direct; its rounds, each against direct's run of the
// same round, 0.76, 0.97 and 0.73×). So every comparison is made within a round, between
// runs a few seconds apart, and the median of the per-round comparisons is reported.

// pairWithDirect sets m's comparison with direct (Ratio, or AddedP50 and AddedP99 for
// latency) from the rounds: rs are the target's, ds direct's, round by round. A target with
// a failed round is reported as failed (median) and gets none. A round in which direct
// failed is left out; the rounds' own comparisons (RoundRatios, RoundAdded) are kept only
// when every round had one, so that they line up with Runs.
func pairWithDirect(m *Result, rs, ds []Result) {
	if !usable(m) {
		return
	}
	ratios, add50, add99 := compareRounds(m.Scenario, rs, ds)
	if len(ratios) > 0 {
		m.Ratio = medianOf(ratios)
		if len(ratios) > 1 && len(ratios) == len(rs) {
			m.RoundRatios = ratios
		}
	}
	if len(add50) > 0 {
		m.AddedP50, m.AddedP99 = medianOf(add50), medianOf(add99)
		if len(add50) > 1 && len(add50) == len(rs) {
			m.RoundAdded = add50
		}
	}
}

// compareRounds compares xs with ys round by round, leaving out a round that failed or
// was skipped on either side: for logins and throughput each round's rate ratio x/y, for
// latency each round's p50 and p99 differences x−y.
func compareRounds(sc string, xs, ys []Result) (ratios []float64, d50, d99 []time.Duration) {
	for k := range min(len(xs), len(ys)) {
		x, y := &xs[k], &ys[k]
		if !usable(x) || !usable(y) {
			continue
		}
		switch sc {
		case Logins, Throughput:
			if y.Rate > 0 {
				ratios = append(ratios, x.Rate/y.Rate)
			}
		case Latency:
			d50 = append(d50, x.P50-y.P50)
			d99 = append(d99, x.P99-y.P99)
		}
	}
	return ratios, d50, d99
}

func usable(r *Result) bool { return r.Error == "" && r.Skipped == "" }

// unusable is !usable for a Result value, for slices.ContainsFunc.
func unusable(r Result) bool { return !usable(&r) }

// medianOf returns the median (the lower of the middle two for an even count), as median
// picks the median round.
func medianOf[T cmp.Ordered](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// peerPairs are the comparisons issue 3's targets name: imapgate against Dovecot's proxy
// and nginx, with the same TLS side.
var peerPairs = [][2]string{
	{Imapgate, DovecotProxy}, {Imapgate, Nginx},
	{ImapgateTLS, DovecotProxyTLS}, {ImapgateTLS, NginxTLS},
}

// peerNotes compares imapgate with its peers round by round, for one scenario: runs holds
// every target's rounds, in targets' order. logins and throughput: imapgate's figure
// divided by the peer's; latency: imapgate's p50 minus the peer's. A pair of which either
// side failed or was skipped in any round is left out, as the table reports that side
// failed.
func peerNotes(sc string, targets []string, runs [][]Result) []string {
	if sc != Logins && sc != Throughput && sc != Latency {
		return nil
	}
	var out []string
	for _, p := range peerPairs {
		a, b := slices.Index(targets, p[0]), slices.Index(targets, p[1])
		if a < 0 || b < 0 {
			continue
		}
		if len(runs[a]) == 0 || slices.ContainsFunc(runs[a], unusable) ||
			slices.ContainsFunc(runs[b], unusable) {
			continue
		}
		ratios, diffs, _ := compareRounds(sc, runs[a], runs[b])
		switch {
		case len(ratios) > 0:
			out = append(out, fmt.Sprintf("%s: %s ÷ %s, round by round: %s× (median %.2f×).",
				sc, p[0], p[1], joinf(ratios, " ", ratioText), medianOf(ratios)))
		case len(diffs) > 0:
			out = append(out, fmt.Sprintf("%s: %s's p50 − %s's, round by round: %s (median %s).",
				sc, p[0], p[1], joinf(diffs, ", ", signedDur), signedDur(medianOf(diffs))))
		}
	}
	return out
}

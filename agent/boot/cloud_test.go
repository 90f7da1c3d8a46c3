package boot

import (
	"strings"
	"testing"
)

func TestParseUserData(t *testing.T) {
	for _, tc := range []struct {
		name, raw, err string
	}{
		{"ok", `{"version":1,"hostname":"web","agentPort":7443,"nodeCA":"PEM"}`, ""},
		{"unknown field", `{"version":1,"hostname":"web","agentPort":7443,"nodeCA":"PEM","token":"x"}`, "unknown field"},
		{"other version", `{"version":2,"agentPort":7443,"nodeCA":"PEM"}`, "version 2"},
		{"bad port", `{"version":1,"agentPort":70000,"nodeCA":"PEM"}`, "agentPort 70000"},
		{"no CA", `{"version":1,"agentPort":7443}`, "nodeCA is missing"},
		{"data after the object", `{"version":1,"hostname":"web","agentPort":7443,"nodeCA":"PEM"} {"nodeCA":"other"}`, "after the JSON object"},
		{"too big", `{"version":1,"hostname":"` + strings.Repeat("a", MaxUserData) + `"}`, "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseUserData([]byte(tc.raw))
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("got %v, want %q", err, tc.err)
			}
		})
	}
}

func TestFirstKeyLine(t *testing.T) {
	fp := "sha256:" + strings.Repeat("ab", 32)
	other := "sha256:" + strings.Repeat("cd", 32)
	for _, tc := range []struct {
		name, console, want string
	}{
		{"alone", KeyLine(fp) + "\n", fp},
		{"after kernel text on the line", "[ 1.2] random: crng init done " + KeyLine(fp) + "\n", fp},
		{"the first wins over a later one", KeyLine(fp) + "\nhello\n" + KeyLine(other) + "\n", fp},
		{"malformed ones are skipped", KeyMarker + " sha256:zz\n" + KeyMarker + " md5:00\n" + KeyLine(fp), fp},
		{"none", "booting\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := FirstKeyLine(strings.NewReader(tc.console), 1<<20)
			if got != tc.want || ok != (tc.want != "") {
				t.Fatalf("got %q %v, want %q", got, ok, tc.want)
			}
		})
	}
}

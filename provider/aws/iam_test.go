package aws

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"testing"
)

// TestIAMPolicyListsEveryCall: iam-policy.json, the policy users give the node, allows exactly the actions the
// backend and its load balancers call — every method of EC2API, EBSAPI and ELBv2API, the only ways they reach
// AWS — and the actions AWS authorises along with them (impliedELBv2Actions), and nothing else.
func TestIAMPolicyListsEveryCall(t *testing.T) {
	raw, err := os.ReadFile("iam-policy.json")
	if err != nil {
		t.Fatal(err)
	}
	var policy struct {
		Statement []struct {
			Action json.RawMessage
		}
	}
	if err := json.Unmarshal(raw, &policy); err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{}
	for _, s := range policy.Statement {
		var one string
		var many []string
		if json.Unmarshal(s.Action, &one) == nil {
			many = []string{one}
		} else if err := json.Unmarshal(s.Action, &many); err != nil {
			t.Fatalf("statement action %s: %v", s.Action, err)
		}
		for _, a := range many {
			allowed[a] = true
		}
	}
	called := map[string]bool{}
	for prefix, api := range map[string]reflect.Type{
		"ec2:":                  reflect.TypeFor[EC2API](),
		"ebs:":                  reflect.TypeFor[EBSAPI](),
		"elasticloadbalancing:": reflect.TypeFor[ELBv2API](),
	} {
		for m := range api.Methods() {
			called[prefix+m.Name] = true
		}
	}
	for _, a := range impliedELBv2Actions {
		called[a] = true
	}
	for a := range called {
		if !allowed[a] {
			t.Errorf("the backend calls %s, which iam-policy.json does not allow", a)
		}
	}
	var extra []string
	for a := range allowed {
		if !called[a] {
			extra = append(extra, a)
		}
	}
	slices.Sort(extra)
	if len(extra) > 0 {
		t.Errorf("iam-policy.json allows actions the backend never calls (least privilege): %v", extra)
	}
}

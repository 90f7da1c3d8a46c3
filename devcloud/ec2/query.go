package ec2

import (
	"encoding/base64"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
)

// params is an EC2 Query request's form. Lists are flattened with 1-based indexes: InstanceId.1,
// Filter.2.Value.1, TagSpecification.1.Tag.3.Key.
type params url.Values

func (q params) str(key string) string { return url.Values(q).Get(key) }

// has reports whether key was sent.
func (q params) has(key string) bool { _, ok := q[key]; return ok }

// boolean parses key; absent is false.
func (q params) boolean(key string) (bool, error) {
	v := q.str(key)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errInvalid("Value (%s) for parameter %s is invalid. Expected a boolean.", v, key)
	}
	return b, nil
}

// integer parses key; absent is def.
func (q params) integer(key string, def int) (int, error) {
	v := q.str(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, errInvalid("Value (%s) for parameter %s is invalid. Expected an integer.", v, key)
	}
	return n, nil
}

// indexed returns the members prefix.N.* as sub-forms with the prefix.N. part removed, ordered by N.
func (q params) indexed(prefix string) []params {
	byIndex := map[int]params{}
	for k, v := range q {
		rest, ok := strings.CutPrefix(k, prefix+".")
		if !ok {
			continue
		}
		num, field, _ := strings.Cut(rest, ".")
		n, err := strconv.Atoi(num)
		if err != nil {
			continue
		}
		if byIndex[n] == nil {
			byIndex[n] = params{}
		}
		byIndex[n][field] = v
	}
	keys := make([]int, 0, len(byIndex))
	for n := range byIndex {
		keys = append(keys, n)
	}
	slices.Sort(keys)
	out := make([]params, 0, len(keys))
	for _, n := range keys {
		out = append(out, byIndex[n])
	}
	return out
}

// list returns the scalar members prefix.N ordered by N.
func (q params) list(prefix string) []string {
	var out []string
	for _, m := range q.indexed(prefix) {
		out = append(out, m.str(""))
	}
	return out
}

// tags returns the Tag.N.Key/Value members, in order.
func (q params) tags(prefix string) []Tag {
	var out []Tag
	for _, m := range q.indexed(prefix) {
		out = append(out, Tag{Key: m.str("Key"), Value: m.str("Value")})
	}
	return out
}

// tagSpecs returns the tags of the TagSpecification.N members by ResourceType, refusing types outside allowed.
func (q params) tagSpecs(allowed ...string) (map[string][]Tag, error) {
	out := map[string][]Tag{}
	for _, spec := range q.indexed("TagSpecification") {
		rt := spec.str("ResourceType")
		if !slices.Contains(allowed, rt) {
			return nil, errInvalid("'%s' is not a valid taggable resource type for this operation.", rt)
		}
		out[rt] = append(out[rt], spec.tags("Tag")...)
	}
	for _, tags := range out {
		if err := checkTags(tags); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// checkTags applies EC2's tag limits: at most 50 tags, keys 1-128 characters not starting with "aws:", values
// at most 256.
func checkTags(tags []Tag) error {
	if len(tags) > 50 {
		return errCode("TagLimitExceeded", "The maximum number of tags (50) has been exceeded.")
	}
	seen := map[string]bool{}
	for _, t := range tags {
		if t.Key == "" || len(t.Key) > 128 || strings.HasPrefix(t.Key, "aws:") || len(t.Value) > 256 {
			return errCode("InvalidParameterValue", "Tag key or value is invalid: %q=%q", t.Key, t.Value)
		}
		if seen[t.Key] {
			return errCode("InvalidParameterValue", "Duplicate tag key '%s' specified.", t.Key)
		}
		seen[t.Key] = true
	}
	return nil
}

// filter is one Filter.N: a name and the values any of which may match (EC2 wildcards * and ?).
type filter struct {
	name   string
	values []string
}

// filters returns the request's filters, refusing names outside known.
func (q params) filters(known ...string) ([]filter, error) {
	var out []filter
	for _, m := range q.indexed("Filter") {
		f := filter{name: m.str("Name"), values: m.list("Value")}
		if !strings.HasPrefix(f.name, "tag:") && f.name != "tag-key" && f.name != "tag-value" && !slices.Contains(known, f.name) {
			return nil, errInvalid("The filter '%s' is invalid", f.name)
		}
		out = append(out, f)
	}
	return out, nil
}

// matches reports whether any of the filter's values matches v.
func (f filter) matches(v string) bool {
	for _, want := range f.values {
		if ok, _ := path.Match(want, v); ok || want == v {
			return true
		}
	}
	return false
}

// matchAll reports whether a resource passes every filter; field gives the resource's value(s) for a filter
// name other than tag:<key> and tag-key.
func matchAll(fs []filter, tags []Tag, field func(name string) []string) bool {
	for _, f := range fs {
		var vals []string
		switch {
		case strings.HasPrefix(f.name, "tag:"):
			if v, ok := tagValue(tags, strings.TrimPrefix(f.name, "tag:")); ok {
				vals = []string{v}
			}
		case f.name == "tag-key":
			for _, t := range tags {
				vals = append(vals, t.Key)
			}
		case f.name == "tag-value":
			for _, t := range tags {
				vals = append(vals, t.Value)
			}
		default:
			vals = field(f.name)
		}
		if !slices.ContainsFunc(vals, f.matches) {
			return false
		}
	}
	return true
}

// page cuts items (in their stable order, each with its sequence number) at NextToken and MaxResults; the
// token names the sequence number after which the next page starts, so removals between pages lose nothing.
func page[T any](q params, items []T, seq func(T) int64, minMax, maxMax int) ([]T, string, error) {
	start := int64(-1)
	if tok := q.str("NextToken"); tok != "" {
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		n, err2 := strconv.ParseInt(strings.TrimPrefix(string(raw), "after:"), 10, 64)
		if err != nil || err2 != nil || !strings.HasPrefix(string(raw), "after:") {
			return nil, "", errInvalid("Invalid NextToken value: %s", tok)
		}
		start = n
	}
	limit, err := q.integer("MaxResults", 0)
	if err != nil {
		return nil, "", err
	}
	if q.has("MaxResults") && (limit < minMax || limit > maxMax) {
		return nil, "", errInvalid("Value ( %d ) for parameter maxResults is invalid. Expecting a value between %d and %d.", limit, minMax, maxMax)
	}
	var out []T
	for _, it := range items {
		if seq(it) <= start {
			continue
		}
		if limit > 0 && len(out) == limit {
			last := seq(out[len(out)-1])
			return out, base64.RawURLEncoding.EncodeToString([]byte("after:" + strconv.FormatInt(last, 10))), nil
		}
		out = append(out, it)
	}
	return out, "", nil
}

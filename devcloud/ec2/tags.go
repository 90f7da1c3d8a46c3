package ec2

import (
	"cmp"
	"slices"
	"strings"
)

// Tag is an EC2 tag.
type Tag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

// tagValue returns the value of key in tags.
func tagValue(tags []Tag, key string) (string, bool) {
	for _, t := range tags {
		if t.Key == key {
			return t.Value, true
		}
	}
	return "", false
}

// mergeTags returns tags with add applied: a key already present takes the new value.
func mergeTags(tags, add []Tag) []Tag {
	out := slices.Clone(tags)
	for _, a := range add {
		if i := slices.IndexFunc(out, func(t Tag) bool { return t.Key == a.Key }); i >= 0 {
			out[i].Value = a.Value
		} else {
			out = append(out, a)
		}
	}
	return out
}

// tagged is a resource of ours that carries tags; the lock is held while it is used.
type tagged struct {
	tags         *[]Tag
	resourceType string // as DescribeTags names it: instance, image, snapshot
	seq          int64
}

// taggedLocked finds one of our resources by ID.
func (s *Server) taggedLocked(id string) (tagged, bool) {
	if in, ok := s.instances[id]; ok {
		return tagged{&in.tags, "instance", in.seq}, true
	}
	if im, ok := s.images[id]; ok && im.state != "deregistered" {
		return tagged{&im.tags, "image", im.seq}, true
	}
	if sn, ok := s.snapshots[id]; ok {
		return tagged{&sn.tags, "snapshot", sn.seq}, true
	}
	return tagged{}, false
}

// notFound is the error EC2 gives for an unknown ID of the kind its prefix names.
func notFound(id string) *apiError {
	switch {
	case strings.HasPrefix(id, "i-"):
		return errCode("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", id)
	case strings.HasPrefix(id, "ami-"):
		return errCode("InvalidAMIID.NotFound", "The image id '[%s]' does not exist", id)
	case strings.HasPrefix(id, "snap-"):
		return errCode("InvalidSnapshot.NotFound", "The snapshot '%s' does not exist.", id)
	case strings.HasPrefix(id, "subnet-"):
		return errCode("InvalidSubnetID.NotFound", "The subnet ID '%s' does not exist", id)
	case strings.HasPrefix(id, "sg-"):
		return errCode("InvalidGroup.NotFound", "The security group '%s' does not exist", id)
	}
	return errCode("InvalidID", "The ID '%s' is not valid", id)
}

// ownPrefix reports whether IDs of this shape are this server's (the rest may be the fallback's VPC resources).
func ownPrefix(id string) bool {
	return strings.HasPrefix(id, "i-") || strings.HasPrefix(id, "ami-") || strings.HasPrefix(id, "snap-")
}

type emptyResponse struct {
	reply
	Return bool `xml:"return"`
}

// createTags tags our resources atomically (every ID must exist first) and hands tags of other resources
// (VPCs, subnets, groups) to the fallback.
func (s *Server) createTags(q params) (any, error) {
	return s.changeTags(q, "CreateTags", func(t tagged, tags []Tag) { *t.tags = mergeTags(*t.tags, tags) })
}

// deleteTags removes the named keys (only where the value matches, if one is given), or every tag when no Tag
// is named.
func (s *Server) deleteTags(q params) (any, error) {
	del := q.indexed("Tag")
	return s.changeTags(q, "DeleteTags", func(t tagged, _ []Tag) {
		if len(del) == 0 {
			*t.tags = nil
			return
		}
		*t.tags = slices.DeleteFunc(*t.tags, func(have Tag) bool {
			for _, d := range del {
				if d.str("Key") == have.Key && (!d.has("Value") || d.str("Value") == have.Value) {
					return true
				}
			}
			return false
		})
	})
}

func (s *Server) changeTags(q params, action string, apply func(tagged, []Tag)) (any, error) {
	ids := q.list("ResourceId")
	if len(ids) == 0 {
		return nil, errCode("MissingParameter", "The request must contain the parameter resourceIdSet")
	}
	tags := q.tags("Tag")
	if action == "CreateTags" {
		if len(tags) == 0 {
			return nil, errCode("MissingParameter", "The request must contain the parameter tagSet")
		}
		if err := checkTags(tags); err != nil {
			return nil, err
		}
	}
	var foreign []string
	s.mu.Lock()
	var found []tagged
	for _, id := range ids {
		t, ok := s.taggedLocked(id)
		switch {
		case ok:
			found = append(found, t)
		case ownPrefix(id) || s.opts.Fallback == nil:
			s.mu.Unlock()
			return nil, notFound(id)
		default:
			foreign = append(foreign, id)
		}
	}
	s.mu.Unlock()
	if len(foreign) > 0 {
		fq := params{"Action": {action}, "Version": {apiVersion}}
		for k, v := range q {
			if strings.HasPrefix(k, "Tag.") {
				fq[k] = v
			}
		}
		for i, id := range foreign {
			fq["ResourceId."+itoa(i+1)] = []string{id}
		}
		if err := s.forward(fq, nil); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	for _, t := range found {
		apply(t, tags)
	}
	s.mu.Unlock()
	return &emptyResponse{Return: true}, nil
}

type tagDescription struct {
	Key          string `xml:"key"`
	Value        string `xml:"value"`
	ResourceID   string `xml:"resourceId"`
	ResourceType string `xml:"resourceType"`
	seq          int64
}

type describeTagsResponse struct {
	reply
	Tags      []tagDescription `xml:"tagSet>item"`
	NextToken string           `xml:"nextToken,omitempty"`
}

// describeTags lists the tags of this server's resources (not the fallback's), ordered by resource then key.
func (s *Server) describeTags(q params) (any, error) {
	fs, err := q.filters("resource-id", "resource-type", "key", "value")
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	var all []tagDescription
	var ids []string
	for id := range s.instances {
		ids = append(ids, id)
	}
	for id := range s.images {
		ids = append(ids, id)
	}
	for id := range s.snapshots {
		ids = append(ids, id)
	}
	for _, id := range ids {
		t, ok := s.taggedLocked(id)
		if !ok {
			continue
		}
		for _, tag := range *t.tags {
			all = append(all, tagDescription{Key: tag.Key, Value: tag.Value, ResourceID: id, ResourceType: t.resourceType, seq: t.seq})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b tagDescription) int { return cmp.Or(cmp.Compare(a.seq, b.seq), cmp.Compare(a.Key, b.Key)) })
	var match []tagDescription
	for i, d := range all {
		d.seq = int64(i)
		if matchAll(fs, []Tag{{Key: d.Key, Value: d.Value}}, func(name string) []string {
			switch name {
			case "resource-id":
				return []string{d.ResourceID}
			case "resource-type":
				return []string{d.ResourceType}
			case "key":
				return []string{d.Key}
			case "value":
				return []string{d.Value}
			}
			return nil
		}) {
			match = append(match, d)
		}
	}
	got, next, err := page(q, match, func(d tagDescription) int64 { return d.seq }, 5, 1000)
	if err != nil {
		return nil, err
	}
	return &describeTagsResponse{Tags: got, NextToken: next}, nil
}

package ec2

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

func itoa(n int) string { return strconv.Itoa(n) }

// forward sends an EC2 Query request to the fallback in-process and decodes its answer into out (nil: ignore
// the body); an EC2 error from the fallback comes back as an *apiError with its code.
func (s *Server) forward(q params, out any) error {
	if s.opts.Fallback == nil {
		return fmt.Errorf("forwarding %s, no fallback", q.str("Action"))
	}
	body := url.Values(q).Encode()
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	rec := httptest.NewRecorder()
	s.opts.Fallback.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		var e struct {
			Code    string `xml:"Errors>Error>Code"`
			Message string `xml:"Errors>Error>Message"`
		}
		if xml.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Code == "" {
			return &apiError{status: rec.Code, Code: "InternalError", Message: "the fallback answered " + http.StatusText(rec.Code)}
		}
		return &apiError{status: rec.Code, Code: e.Code, Message: e.Message}
	}
	if out == nil {
		return nil
	}
	if err := xml.Unmarshal(rec.Body.Bytes(), out); err != nil {
		return fmt.Errorf("decoding the fallback's %s answer, %w", q.str("Action"), err)
	}
	return nil
}

type subnetXML struct {
	SubnetID         string `xml:"subnetId"`
	VpcID            string `xml:"vpcId"`
	CidrBlock        string `xml:"cidrBlock"`
	AvailabilityZone string `xml:"availabilityZone"`
	AvailableIPs     int    `xml:"availableIpAddressCount"`
	State            string `xml:"state"`
	OwnerID          string `xml:"ownerId"`
	DefaultForAz     bool   `xml:"defaultForAz"`
	MapPublicIP      bool   `xml:"mapPublicIpOnLaunch"`
	Tags             []Tag  `xml:"tagSet>item"`
}

type describeSubnetsResponse struct {
	reply
	Subnets   []subnetXML `xml:"subnetSet>item"`
	NextToken string      `xml:"nextToken,omitempty"`
}

type groupXML struct {
	GroupID     string `xml:"groupId"`
	GroupName   string `xml:"groupName"`
	Description string `xml:"groupDescription"`
	VpcID       string `xml:"vpcId"`
	OwnerID     string `xml:"ownerId"`
	Tags        []Tag  `xml:"tagSet>item"`
}

type describeGroupsResponse struct {
	reply
	Groups    []groupXML `xml:"securityGroupInfo>item"`
	NextToken string     `xml:"nextToken,omitempty"`
}

// lookupSubnets returns the subnets with the given IDs (all subnets when ids is empty) from the fixtures and
// then the fallback; an unknown ID is InvalidSubnetID.NotFound.
func (s *Server) lookupSubnets(ids []string) ([]Subnet, error) {
	return lookup(s, ids, s.opts.Subnets, s.subnets, func(n Subnet) string { return n.ID }, func(missing []string) ([]Subnet, error) {
		fq := params{"Action": {"DescribeSubnets"}, "Version": {apiVersion}}
		for i, id := range missing {
			fq["SubnetId."+itoa(i+1)] = []string{id}
		}
		var resp describeSubnetsResponse
		if err := s.forward(fq, &resp); err != nil {
			return nil, err
		}
		var out []Subnet
		for _, x := range resp.Subnets {
			out = append(out, Subnet{ID: x.SubnetID, VpcID: x.VpcID, CIDR: x.CidrBlock, AvailabilityZone: x.AvailabilityZone, Tags: x.Tags})
		}
		return out, nil
	})
}

// lookupGroups is lookupSubnets for security groups.
func (s *Server) lookupGroups(ids []string) ([]SecurityGroup, error) {
	return lookup(s, ids, s.opts.SecurityGroups, s.groups, func(g SecurityGroup) string { return g.ID }, func(missing []string) ([]SecurityGroup, error) {
		fq := params{"Action": {"DescribeSecurityGroups"}, "Version": {apiVersion}}
		for i, id := range missing {
			fq["GroupId."+itoa(i+1)] = []string{id}
		}
		var resp describeGroupsResponse
		if err := s.forward(fq, &resp); err != nil {
			return nil, err
		}
		var out []SecurityGroup
		for _, x := range resp.Groups {
			out = append(out, SecurityGroup{ID: x.GroupID, Name: x.GroupName, Description: x.Description, VpcID: x.VpcID, Tags: x.Tags})
		}
		return out, nil
	})
}

// lookup finds network resources by ID (all when ids is empty): the fixtures first, then what forward finds in the
// fallback (kumo's VPC resources); an unknown ID is a NotFound error.
func lookup[T any](s *Server, ids []string, all []T, fixtures map[string]T, id func(T) string, forward func(missing []string) ([]T, error)) ([]T, error) {
	var out []T
	var missing []string
	if len(ids) == 0 {
		out = slices.Clone(all)
	}
	for _, k := range ids {
		if v, ok := fixtures[k]; ok {
			out = append(out, v)
		} else {
			missing = append(missing, k)
		}
	}
	if s.opts.Fallback == nil {
		if len(missing) > 0 {
			return nil, notFound(missing[0])
		}
		return out, nil
	}
	if len(ids) > 0 && len(missing) == 0 {
		return out, nil
	}
	found, err := forward(missing)
	if err != nil {
		return nil, err
	}
	foreign := slices.DeleteFunc(found, func(v T) bool { _, fixture := fixtures[id(v)]; return fixture })
	for _, k := range missing {
		if !slices.ContainsFunc(foreign, func(v T) bool { return id(v) == k }) {
			return nil, notFound(k)
		}
	}
	slices.SortFunc(foreign, func(a, b T) int { return strings.Compare(id(a), id(b)) })
	return append(out, foreign...), nil
}

func (s *Server) describeSubnets(q params) (any, error) {
	fs, err := q.filters("subnet-id", "vpc-id", "availability-zone", "cidr-block", "state")
	if err != nil {
		return nil, err
	}
	all, err := s.lookupSubnets(q.list("SubnetId"))
	if err != nil {
		return nil, err
	}
	type entry struct {
		i int
		n Subnet
	}
	var match []entry
	for i, n := range all {
		if matchAll(fs, n.Tags, func(name string) []string {
			return map[string][]string{"subnet-id": {n.ID}, "vpc-id": {n.VpcID}, "availability-zone": {n.AvailabilityZone},
				"cidr-block": {n.CIDR}, "state": {"available"}}[name]
		}) {
			match = append(match, entry{i, n})
		}
	}
	got, next, err := page(q, match, func(e entry) int64 { return int64(e.i) }, 5, 1000)
	if err != nil {
		return nil, err
	}
	out := &describeSubnetsResponse{NextToken: next}
	for _, e := range got {
		out.Subnets = append(out.Subnets, subnetXML{SubnetID: e.n.ID, VpcID: e.n.VpcID, CidrBlock: e.n.CIDR,
			AvailabilityZone: e.n.AvailabilityZone, AvailableIPs: s.availableIPs(e.n), State: "available",
			OwnerID: s.opts.AccountID, Tags: e.n.Tags})
	}
	return out, nil
}

func (s *Server) describeSecurityGroups(q params) (any, error) {
	fs, err := q.filters("group-id", "group-name", "vpc-id", "description")
	if err != nil {
		return nil, err
	}
	all, err := s.lookupGroups(q.list("GroupId"))
	if err != nil {
		return nil, err
	}
	names := q.list("GroupName")
	type entry struct {
		i int
		g SecurityGroup
	}
	var match []entry
	for i, g := range all {
		if len(names) > 0 && !slices.Contains(names, g.Name) {
			continue
		}
		if matchAll(fs, g.Tags, func(name string) []string {
			return map[string][]string{"group-id": {g.ID}, "group-name": {g.Name}, "vpc-id": {g.VpcID}, "description": {g.Description}}[name]
		}) {
			match = append(match, entry{i, g})
		}
	}
	got, next, err := page(q, match, func(e entry) int64 { return int64(e.i) }, 5, 1000)
	if err != nil {
		return nil, err
	}
	out := &describeGroupsResponse{NextToken: next}
	for _, e := range got {
		out.Groups = append(out.Groups, groupXML{GroupID: e.g.ID, GroupName: e.g.Name, Description: e.g.Description,
			VpcID: e.g.VpcID, OwnerID: s.opts.AccountID, Tags: e.g.Tags})
	}
	return out, nil
}

// usableRange returns the first and last addresses EC2 gives instances in cidr: it reserves the network
// address, the next three (router, DNS, future) and the broadcast address.
func usableRange(cidr string) (netip.Addr, netip.Addr, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() || p.Bits() > 28 {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("subnet CIDR %q is not an IPv4 prefix of /28 or larger", cidr)
	}
	p = p.Masked()
	first := p.Addr().Next().Next().Next().Next()
	n := u32(p.Addr()) | (1<<(32-p.Bits()) - 1)
	last := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n - 1)})
	return first, last, nil
}

// allocateIPLocked takes the lowest free address of the subnet; s.mu is held.
func (s *Server) allocateIPLocked(n Subnet) (string, error) {
	first, last, err := usableRange(n.CIDR)
	if err != nil {
		return "", errInvalid("%v", err)
	}
	used := s.usedIPs[n.ID]
	if used == nil {
		used = map[string]bool{}
		s.usedIPs[n.ID] = used
	}
	for a := first; a.Compare(last) <= 0; a = a.Next() {
		if !used[a.String()] {
			used[a.String()] = true
			return a.String(), nil
		}
	}
	return "", &apiError{status: http.StatusBadRequest, Code: "InsufficientFreeAddressesInSubnet",
		Message: fmt.Sprintf("There are not enough free addresses in subnet '%s' to satisfy the requested number of instances.", n.ID)}
}

// availableIPs counts the subnet's free addresses.
func (s *Server) availableIPs(n Subnet) int {
	first, last, err := usableRange(n.CIDR)
	if err != nil {
		return 0
	}
	total := int(u32(last) - u32(first) + 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(total-len(s.usedIPs[n.ID]), 0)
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

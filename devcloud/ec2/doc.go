// Package ec2 is a local, stateful EC2 endpoint speaking the EC2 Query protocol (the aws-sdk-go-v2 client talks
// to it unmodified): the calls the aws backend makes, with EC2's semantics (ClientToken idempotency,
// TagSpecifications, tag and state filters, paging, state transitions, errors in EC2's XML with real codes). It is
// a development and test tool, never linked into the node's binary. What an instance *is* is a Runner's business:
// none (instances only change state), a fake agent (unit tests of the backend), or a QEMU VM (the devcloud).
package ec2

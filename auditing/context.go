package auditing

import "context"

// Actor identifies who performs an audited operation: a user or service id
// and, optionally, the role it acts in. It is set by the application on the
// request context with [WithActor].
type Actor struct{ ID, Role string }

type ctxKey int

const (
	actorKey ctxKey = iota
	purposeKey
	requestIDKey
	clientAddrKey
)

// WithActor returns a copy of ctx carrying a as the actor of audited
// operations.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey, a)
}

// ActorFrom returns the actor set on ctx by [WithActor]. It reports false if
// there is none or its ID is empty.
func ActorFrom(ctx context.Context) (Actor, bool) {
	a, _ := ctx.Value(actorKey).(Actor)
	return a, a.ID != ""
}

// WithPurpose returns a copy of ctx carrying the purpose of use of audited
// operations (for example "treatment", "billing", "research").
func WithPurpose(ctx context.Context, purpose string) context.Context {
	return context.WithValue(ctx, purposeKey, purpose)
}

// WithRequestID returns a copy of ctx carrying the id of the request that
// performs audited operations, to correlate audit events with other logs.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey, id)
}

// WithClientAddr returns a copy of ctx carrying the network address of the
// client on whose behalf audited operations run.
func WithClientAddr(ctx context.Context, addr string) context.Context {
	return context.WithValue(ctx, clientAddrKey, addr)
}

// FromContext returns the actor, purpose, request id and client address set
// on ctx; each is its zero value if unset.
func FromContext(ctx context.Context) (actor Actor, purpose, requestID, clientAddr string) {
	actor, _ = ctx.Value(actorKey).(Actor)
	purpose, _ = ctx.Value(purposeKey).(string)
	requestID, _ = ctx.Value(requestIDKey).(string)
	clientAddr, _ = ctx.Value(clientAddrKey).(string)
	return actor, purpose, requestID, clientAddr
}

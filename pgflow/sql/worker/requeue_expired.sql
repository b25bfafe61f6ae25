select pgflow.requeue_expired($1::int) as requeued

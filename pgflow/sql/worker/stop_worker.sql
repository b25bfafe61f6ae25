select pgflow.stop_worker($1::uuid)

select pgflow.register_worker($1::uuid, $2::text, $3::int, $4::text[])

-- Server settings that hurt a queue, as sentences for the supervisor's log.
select format('autovacuum is off on this server: dead rows of pgflow.queue, tasks, runs and '
              'step_states pile up until someone runs VACUUM, and claims slow down with them. '
              'Turn it on (autovacuum = on), or VACUUM the pgflow tables from cron; see '
              'deploy/README.md, "Postgres settings".')
where not current_setting('autovacuum')::boolean
union all
select 'track_counts is off on this server: autovacuum cannot see which tables need it.'
where not current_setting('track_counts')::boolean

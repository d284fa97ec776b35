//! scheduler: the every-minute tick starts a due run's execution on Step Functions (moto)
//! exactly once, named after the run, however often it is invoked.

use crate::{fixture, Stack};

#[tokio::test]
async fn a_due_run_gets_one_execution_named_after_it_however_often_the_tick_runs() {
    let Some(stack) = Stack::start("the scheduler Lambda").await else {
        return;
    };
    let svc = &stack.deployment.service;
    let job = crate::job_seeded_now(&stack, svc).await;
    // The Scheduler invocation's payload is not read; the fixture documents its shape.
    assert_eq!(
        fixture("scheduler/every-minute.json")["source"],
        "aws.scheduler"
    );

    let first = tern_fn_scheduler::handle(&stack.deployment.replication)
        .await
        .expect("tick");
    let created = first["runsCreated"].as_array().unwrap();
    assert_eq!(created.len(), 1, "{first}");
    assert_eq!(first["executionsStarted"], first["runsCreated"], "{first}");
    let run_id = created[0].as_str().unwrap().to_owned();

    // Overlapping and later ticks start nothing more.
    let (a, b) = tokio::join!(
        tern_fn_scheduler::handle(&stack.deployment.replication),
        tern_fn_scheduler::handle(&stack.deployment.replication)
    );
    for tick in [a.unwrap(), b.unwrap()] {
        assert!(tick["runsCreated"].as_array().unwrap().is_empty(), "{tick}");
        assert!(
            tick["executionsStarted"].as_array().unwrap().is_empty(),
            "{tick}"
        );
    }
    let executions = aws_sdk_sfn::Client::new(&stack.aws)
        .list_executions()
        .state_machine_arn(&stack.settings.state_machine_arn)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = executions.executions().iter().map(|e| e.name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].contains(&run_id),
        "execution {names:?} for run {run_id}"
    );
    let job_now = svc.get_job(&job).await.expect("job");
    assert_eq!(
        job_now
            .active_run
            .as_ref()
            .map(|r| r.replication_run_id.as_str()),
        Some(run_id.as_str()),
        "the job's run in progress is the one started"
    );
}

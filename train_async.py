"""Asynchronous training: rollout N+1 is generated while rollout N trains (for SFT: the next batch is read,
tokenised and masked while the trainers work). Rollouts are at most one policy step stale."""

from slime.ray.actor_group import wait_all
from slime.ray.driver import (
    Progress,
    create_training_models,
    evaluate,
    init_training_models,
    main,
    ray_session,
    save,
    set_num_rollout,
    start_train_step,
    sync_weights,
)
from slime.ray.placement_group import create_placement_groups
from slime.ray.rollout import create_rollout_manager
from slime.utils.errors import UserError
from slime.utils.misc import should_run_periodic_action


def train(args) -> dict:
    if args.colocate:
        raise UserError("--colocate is not supported by train_async.py: colocated engines and trainers share the "
                        "devices, so generation cannot overlap training; use train.py")
    with ray_session(args):
        placements = create_placement_groups(args)
        actor_model, critic_model = create_training_models(args, placements["actor"])
        rollout_manager = create_rollout_manager(args, placements["rollout"])
        num_rollout_per_epoch = set_num_rollout(args, rollout_manager)
        init_training_models(args, actor_model, critic_model, rollout_manager)
        sync_weights(args, rollout_manager, actor_model)
        progress = Progress(args)

        next_rollout = rollout_manager.generate.remote(args.start_rollout_id)
        fetched = None
        for rollout_id in range(args.start_rollout_id, args.num_rollout):
            if fetched is None:
                fetched = wait_all([next_rollout], f"rollout {rollout_id}")[0]
            (boxes, rollout_metrics), fetched = fetched, None
            step = start_train_step(args, rollout_id, boxes, actor_model, critic_model)
            # Asked for once the trainers have their step: they fetch their shards (from the rollout manager's
            # store) before the manager is busy with the next rollout.
            last = rollout_id + 1 == args.num_rollout
            next_rollout = None if last else rollout_manager.generate.remote(rollout_id + 1)
            progress.log(rollout_id, rollout_metrics, step())

            if should_run_periodic_action(rollout_id, args.save_interval, num_rollout_per_epoch, args.num_rollout):
                save(rollout_id, actor_model, rollout_manager, critic_model)
            if (rollout_id + 1) % args.update_weights_interval == 0:
                # Weights must not change under an in-flight generation: take it first, then sync.
                if next_rollout is not None:
                    fetched, next_rollout = wait_all([next_rollout], f"rollout {rollout_id + 1}")[0], None
                progress.log_sync(rollout_id, sync_weights(args, rollout_manager, actor_model))
            if should_run_periodic_action(rollout_id, args.eval_interval, num_rollout_per_epoch):
                evaluate(args, rollout_id, rollout_manager, actor_model, progress)

        wait_all([rollout_manager.dispose.remote()], "the rollout manager to stop")
        return progress.summary()


if __name__ == "__main__":
    main(train)

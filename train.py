"""Synchronous training: generate a rollout, train on it, save, sync weights, evaluate; repeat."""

from slime.ray.driver import (
    Progress,
    create_training_models,
    evaluate,
    init_training_models,
    main,
    offload_train,
    ray_session,
    save,
    generate,
    set_num_rollout,
    sync_weights,
    train_step,
)
from slime.ray.placement_group import create_placement_groups
from slime.ray.rollout import create_rollout_manager
from slime.ray.actor_group import wait_all
from slime.utils.misc import should_run_periodic_action


def train(args) -> dict:
    with ray_session(args):
        placements = create_placement_groups(args)
        actor_model, critic_model = create_training_models(args, placements["actor"])
        rollout_manager = create_rollout_manager(args, placements["rollout"])
        num_rollout_per_epoch = set_num_rollout(args, rollout_manager)
        init_training_models(args, actor_model, critic_model, rollout_manager)
        offload_train(args, actor_model, critic_model)
        if args.offload_rollout:
            wait_all([rollout_manager.offload.remote()], "the engines to release their memory")
        sync_weights(args, rollout_manager, actor_model)  # engines start from the trainer's weights (no-op for SFT)
        progress = Progress(args)

        if args.eval_interval is not None and args.start_rollout_id == 0 and not args.skip_eval_before_train:
            evaluate(args, 0, rollout_manager, actor_model, progress)

        for rollout_id in range(args.start_rollout_id, args.num_rollout):
            rollout_metrics, shards = generate(args, rollout_manager, rollout_id)
            step_metrics = train_step(args, rollout_id, shards, actor_model, critic_model)
            progress.log(rollout_id, rollout_metrics, step_metrics)

            if should_run_periodic_action(rollout_id, args.save_interval, num_rollout_per_epoch, args.num_rollout):
                save(rollout_id, actor_model, rollout_manager, critic_model)
            offload_train(args, actor_model, critic_model)
            progress.log_sync(rollout_id, sync_weights(args, rollout_manager, actor_model))
            if should_run_periodic_action(rollout_id, args.eval_interval, num_rollout_per_epoch):
                evaluate(args, rollout_id, rollout_manager, actor_model, progress)

        wait_all([rollout_manager.dispose.remote()], "the rollout manager to stop")
        return progress.summary()


if __name__ == "__main__":
    main(train)

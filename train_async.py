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
from slime.ray.rollout import create_rollout_manager, request_rollout
from slime.utils.errors import UserError
from slime.utils.misc import should_run_periodic_action


def wait_for_rollout(rollout: tuple, rollout_id: int, queued_steps: list) -> dict:
    """The rollout's metrics. If it failed, a step queued on the trainers that failed as well raises here, with the
    rollout's error above it in the traceback, instead of going unreported."""
    try:
        return wait_all([rollout[0]], f"rollout {rollout_id}")[0]
    except Exception:
        for _, _, step in queued_steps:
            step()
        raise


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

        # Without engines to push weights to (SFT, replayed rollouts) and without a critic, the trainers are given the
        # next step before this one's metrics are read: they go from step to step without waiting on the driver.
        overlap = critic_model is None and not actor_model.engines_connected
        unlogged = []  # steps handed to the trainers whose metrics are not read yet: (rollout id, metrics, step)
        # (metrics, shards) as refs; a resumed run that had finished asks for nothing.
        next_rollout = request_rollout(args, rollout_manager, args.start_rollout_id) \
            if args.start_rollout_id < args.num_rollout else None
        for rollout_id in range(args.start_rollout_id, args.num_rollout):
            rollout_metrics, shards = wait_for_rollout(next_rollout, rollout_id, unlogged), next_rollout[1]
            unlogged.append((rollout_id, rollout_metrics, start_train_step(args, rollout_id, shards, actor_model,
                                                                           critic_model)))
            # Asked for once the trainers have their step, so that preparing the next rollout does not delay the
            # hand-over of this one on a machine whose cores the manager and the trainers share.
            last = rollout_id + 1 == args.num_rollout
            next_rollout = None if last else request_rollout(args, rollout_manager, rollout_id + 1)
            save_now = should_run_periodic_action(rollout_id, args.save_interval, num_rollout_per_epoch,
                                                  args.num_rollout)
            eval_now = should_run_periodic_action(rollout_id, args.eval_interval, num_rollout_per_epoch)
            while len(unlogged) > (1 if overlap and not (save_now or eval_now or last) else 0):
                logged_id, logged_metrics, step = unlogged.pop(0)
                progress.log(logged_id, logged_metrics, step())

            if save_now:
                save(rollout_id, actor_model, rollout_manager, critic_model)
            if (rollout_id + 1) % args.update_weights_interval == 0:
                if next_rollout is not None:  # weights must not change under an in-flight generation
                    wait_for_rollout(next_rollout, rollout_id + 1, unlogged)
                progress.log_sync(rollout_id, sync_weights(args, rollout_manager, actor_model))
            if eval_now:
                evaluate(args, rollout_id, rollout_manager, actor_model, progress)

        wait_all([rollout_manager.dispose.remote()], "the rollout manager to stop")
        return progress.summary()


if __name__ == "__main__":
    main(train)

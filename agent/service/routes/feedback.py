"""Feedback on an answer: a rating, and optionally a correction or a comment."""

from __future__ import annotations

from fastapi import APIRouter

from agent.feedback import NotYourInteraction, UnknownInteraction, record_feedback
from agent.service.deps import AgentCaller, LimitsDep, MetricsDep, SettingsDep, StoreDep
from agent.service.errors import APIError
from agent.service.schemas import FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["feedback"])


@router.post("/api/feedback", status_code=201, response_model=FeedbackResponse)
def feedback(body: FeedbackRequest, who: AgentCaller, settings: SettingsDep, store: StoreDep, limits: LimitsDep,
             metrics: MetricsDep) -> FeedbackResponse:
    for field in ("correction", "comment"):
        value = getattr(body, field)
        if value is not None and not value.strip():
            raise APIError(400, f"{field} is empty", f"empty_{field}", field)
        if value is not None and len(value) > settings.max_message_chars:
            raise APIError(400, f"{field} has {len(value)} characters; the limit is {settings.max_message_chars}",
                           f"{field}_too_long", field)
    try:
        limits.feedback_rate.check(who.name)
    except APIError:
        metrics.rejected.labels("feedback_rate_limit").inc()
        raise
    try:
        row = record_feedback(store, body.interaction_id, body.rating, user=who.name,
                              correction=body.correction.strip() if body.correction else None,
                              comment=body.comment.strip() if body.comment else None,
                              owner_only=not who.can("operator"))
    except UnknownInteraction as error:
        raise APIError(404, str(error), "interaction_not_found", "interaction_id") from None
    except NotYourInteraction as error:
        raise APIError(403, str(error), "not_your_interaction", "interaction_id") from None
    metrics.feedback.labels(body.rating, str(bool(body.correction)).lower()).inc()
    return FeedbackResponse(id=row.id, interaction_id=row.interaction_id, rating=row.rating)

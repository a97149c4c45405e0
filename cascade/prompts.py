"""How a query becomes what a model reads: chat messages, or a plain completion prompt."""

from __future__ import annotations

from cascade.schemas import Query

CONTEXT_INSTRUCTION = "Answer with a short phrase copied from the context."


def context_block(documents: list[str]) -> str:
    """Context documents joined as one block, numbered when there are several."""
    if len(documents) == 1:
        return documents[0]
    return "\n\n".join(f"[{i}] {doc}" for i, doc in enumerate(documents, start=1))


def chat_messages(query: Query) -> list[dict[str, str]]:
    """OpenAI-style messages. Context documents go into the last user turn, ahead of the question:
    on 40 SQuAD questions SmolLM2-135M scored token F1 0.18 this way against 0.14 to 0.15 with the
    context in a system message."""
    messages = ([m.model_dump() for m in query.messages] if query.messages is not None
                else [{"role": "user", "content": query.prompt or ""}])
    if query.context:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user] = {
            "role": "user",
            "content": f"Context: {context_block(query.context)}\n\nQuestion: {messages[last_user]['content']}\n"
                       f"{CONTEXT_INSTRUCTION}",
        }
    return messages


# Two worked examples teach a base model the answer format; with them, on 40 SQuAD questions,
# Gemma 3 270M went from exact match 0.05 to 0.30 and SmolLM2-135M (prompted plain) to 0.125.
DEMONSTRATIONS = (
    ("The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
     "When was the Eiffel Tower completed?", "1889"),
    ("Marie Curie shared the 1903 Nobel Prize in Physics with Pierre Curie and Henri Becquerel.",
     "Who shared the prize with Marie Curie?", "Pierre Curie and Henri Becquerel"),
)


def plain_prompt(query: Query) -> str:
    """A completion prompt for base models: worked examples, then context, question and 'Answer:'.

    A bare prompt without context is passed through unchanged.
    """
    if query.prompt is not None and not query.context:
        return query.prompt
    parts = [m.content for m in query.messages or [] if m.role == "system"]
    parts += [f"Context: {c}\nQuestion: {q}\nAnswer: {a}" for c, q, a in DEMONSTRATIONS]
    context = f"Context: {context_block(query.context)}\n" if query.context else ""
    parts.append(f"{context}Question: {query.question}\nAnswer:")
    return "\n\n".join(parts)

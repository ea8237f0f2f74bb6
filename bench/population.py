"""A synthetic client-registry population with the structure and the errors real registries see.

``generate_population(n_people, seed)`` returns ``(patients, truth)``: FHIR R4 Patient dicts (each with an
``id``) and ``truth[patient_id] = person_id``. Person ids look like ``H000123.2``: the part before the dot is
the household, so benchmarks can count false merges inside households.

What is in it (all rates are per person or per record and deliberately not gentle):
- households: couples with children, single parents, people living alone; siblings share family name,
  address and often the household phone; twins (~4 % of births, same birth date, often similar or
  rhyming names — Hassan/Hussein, Wasswa/Kato style); sons named after their father (Jr./Sr.), sometimes
  with a "Jr" suffix and sometimes without; married women recorded under maiden and married names;
- locales: East African (Swahili, Kikuyu, Luo, Luganda), West African francophone (Mandé, Fula, Mossi),
  West African anglophone (Akan, Yoruba, Igbo, Hausa), Lusophone (Mozambique/Angola) and English; names
  are drawn from small pools (Zipf-like), so unrelated namesakes are common, as in real registries;
- records: 1–6 per person from different facilities, each facility with its own identifier system
  (a re-registration at the same facility usually gets a new local number); a national id on ~35 % of
  adults, carried by some of their records (1 % typos);
- errors: typos and transpositions, nicknames and cross-language variants (Joseph/Yusuf/José), phonetic
  spellings (Ouédraogo/Wedraogo), accents dropped, given/family swapped, middle name used as given or
  dropped, estimated birth dates (year only, 01-01, 06-15, off by a year), day–month swaps, digit typos,
  missing gender / birth date / phone / address, changed phone numbers, abbreviated addresses.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

NID = "http://example.org/national-id"

# ---- name pools (family, male given, female given, cities/districts, phone prefix) -------------------
LOCALES: dict[str, dict[str, Any]] = {
    "east_africa": {
        "family": (
            "Mwangi Otieno Wanjiru Kamau Ochieng Njoroge Mutua Kiprop Chebet Wambui Odhiambo Achieng "
            "Akinyi Omondi Kariuki Mohamed Hassan Juma Mollel Massawe Swai Lyimo Temba Mushi Nakato "
            "Ssempala Mukasa Nabirye Okello Byaruhanga Tumusiime Kato Namukasa Waweru Kimani Mbugua "
            "Onyango Wekesa Barasa Salim"
        ),
        "male": (
            "John Joseph Peter James David Daniel Samuel Brian Kevin Dennis Hassan Hussein Ali Juma "
            "Baraka Emmanuel Moses Paul Isaac Stephen Wasswa Kato Musa Omari Rashidi Kiprono Kipchoge "
            "Otieno Ochieng Francis Patrick Charles Godfrey Edward Abdallah Salim Bakari Hamisi Erick "
            "Collins"
        ),
        "female": (
            "Mary Grace Faith Mercy Joyce Esther Jane Ann Lucy Nancy Neema Rehema Amina Mwanaisha "
            "Zawadi Upendo Halima Fatuma Aisha Wanjiku Achieng Akinyi Nakato Babirye Nansubuga Agnes "
            "Rose Sarah Ruth Eunice Beatrice Catherine Margaret Elizabeth Zainabu Mariamu Winnie "
            "Irene Sharon"
        ),
        "places": [
            ("Nairobi", "Westlands"),
            ("Nairobi", "Kibera"),
            ("Kisumu", "Kondele"),
            ("Mombasa", "Likoni"),
            ("Arusha", "Sokon"),
            ("Dar es Salaam", "Kinondoni"),
            ("Kampala", "Nakawa"),
            ("Nakuru", "Bahati"),
            ("Eldoret", "Langas"),
            ("Moshi", "Mjini"),
        ],
        "streets": (
            "Moi Avenue;Ngong Road;Jogoo Road;Sokoine Road;Uhuru Street;Kenyatta Avenue;Bombo "
            "Road;Nyerere Road;Oginga Odinga Street;Plot;Block;Mtaa wa Kariakoo"
        ),
        "phone": "+2547",
    },
    "west_africa_fr": {
        "family": (
            "Diallo Traoré Ouédraogo Koné Coulibaly Sawadogo Camara Keita Diop Ndiaye Fall Sow Ba "
            "Cissé Touré Kaboré Zongo Sanogo Diarra Kouassi Konaté Bamba Ouattara Sylla Barry Bah "
            "Sangaré Dembélé Yao Kouamé N'Guessan Tapsoba Compaoré Niang Gueye Faye Mbaye Sarr Thiam "
            "Dramé"
        ),
        "male": (
            "Mamadou Moussa Ibrahima Abdoulaye Amadou Ousmane Souleymane Boubacar Seydou Adama Issa "
            "Oumar Lamine Cheikh Modou Aliou Yacouba Salif Drissa Bakary Jean Pierre Paul Joseph "
            "François Emmanuel Koffi Kouadio Yao Désiré Serge Issouf Karim Hamidou Idrissa Alassane "
            "Tidiane Babacar Mohamed"
        ),
        "female": (
            "Aminata Fatoumata Mariam Awa Kadiatou Aïssatou Mariama Fanta Rokia Salimata Assétou "
            "Oumou Ramatoulaye Khady Fatou Adama Bintou Djeneba Korotoumou Hawa Marie Jeanne Pauline "
            "Odile Brigitte Akissi Adjoua Affoué Amenan Ndeye Coumba Astou Sokhna Safiatou Haoua "
            "Rasmata Maimouna Nafissatou"
        ),
        "places": [
            ("Ouagadougou", "Kadiogo"),
            ("Bamako", "Commune IV"),
            ("Dakar", "Pikine"),
            ("Abidjan", "Yopougon"),
            ("Bobo-Dioulasso", "Houet"),
            ("Thiès", "Thiès Nord"),
            ("Conakry", "Matoto"),
            ("Ségou", "Ségou"),
            ("Bouaké", "Gbêkê"),
            ("Niamey", "Niamey II"),
        ],
        "streets": (
            "Rue;Avenue Kwame Nkrumah;Boulevard de la Liberté;Quartier;Secteur;Rue des Écoles;Avenue "
            "Bourguiba;Cité;Rue Carnot;Zone"
        ),
        "phone": "+2267",
    },
    "west_africa_en": {
        "family": (
            "Mensah Owusu Asante Boateng Osei Appiah Addo Agyeman Darko Amoah Adeyemi Okafor Okonkwo "
            "Adebayo Ogunleye Eze Nwosu Okeke Obi Adewale Babatunde Ibrahim Musa Abubakar Bello Usman "
            "Danjuma Quaye Tetteh Annan Ofori Acheampong Oyelaran Chukwu Nnamdi Olawale Akande "
            "Afolabi"
        ),
        "male": (
            "Kwame Kofi Kwaku Kwabena Yaw Kojo Kwasi Kwadwo Emmanuel Samuel Daniel Michael Isaac "
            "Ebenezer Chinedu Chukwuemeka Emeka Obinna Ikenna Oluwaseun Olumide Babatunde Adebayo "
            "Tunde Segun Femi Ibrahim Musa Abubakar Sani Usman Aliyu Yusuf Godwin Prince Richard Nana "
            "Kelechi Uche"
        ),
        "female": (
            "Ama Akua Abena Adwoa Afua Yaa Efua Akosua Esi Adjoa Grace Comfort Patience Gifty Mercy "
            "Abigail Chioma Ngozi Nkechi Adaeze Amaka Chiamaka Folake Funmilayo Yetunde Bukola Kemi "
            "Aisha Hauwa Zainab Fatima Hadiza Blessing Joy Precious Esther Deborah Ifeoma Oluwatobi "
            "Temitope"
        ),
        "places": [
            ("Accra", "Ayawaso"),
            ("Kumasi", "Asokwa"),
            ("Lagos", "Ikeja"),
            ("Lagos", "Surulere"),
            ("Ibadan", "Oyo"),
            ("Enugu", "Enugu North"),
            ("Kano", "Nassarawa"),
            ("Tamale", "Sagnarigu"),
            ("Cape Coast", "Abura"),
            ("Abuja", "Garki"),
        ],
        "streets": (
            "Ring Road;Oxford Street;Awolowo Road;Herbert Macaulay Way;Adeola Odeku Street;Spintex "
            "Road;Liberation Road;Zik Avenue;Ahmadu Bello Way;Close"
        ),
        "phone": "+2332",
    },
    "lusophone": {
        "family": (
            "Silva Santos Machava Cossa Nhantumbo Sitoe Mondlane Chissano Macuácua Muianga Tembe "
            "Matsinhe Langa Mabunda Sithole Fernandes Pereira Costa Rodrigues Gomes Ferreira Domingos "
            "Manuel António José Mucavele Massingue Cumbe Chiziane Bila Nhaca Baloi Novela Guambe "
            "Zandamela Macamo Chauque"
        ),
        "male": (
            "João José António Manuel Carlos Armando Fernando Paulo Pedro Francisco Joaquim Alberto "
            "Ernesto Celso Américo Abílio Domingos Luís Jorge Rui Tomás Simão Baptista Eduardo Inácio "
            "Horácio Samuel Daniel Arlindo Felisberto Zacarias Raul Sérgio Hélder Nelson Edson "
            "Cândido Jacinto"
        ),
        "female": (
            "Maria Ana Celeste Joana Isabel Rosa Luísa Teresa Fátima Graça Lúcia Marta Helena Paula "
            "Sara Filomena Albertina Ermelinda Felizarda Amélia Esperança Glória Aurora Rita Beatriz "
            "Catarina Cristina Deolinda Isaura Judite Laura Madalena Olga Palmira Regina Sónia Telma "
            "Vitória Zulmira"
        ),
        "places": [
            ("Maputo", "KaMpfumo"),
            ("Matola", "Machava"),
            ("Beira", "Munhava"),
            ("Nampula", "Muhala"),
            ("Luanda", "Cazenga"),
            ("Quelimane", "Sangariveira"),
            ("Tete", "Matundo"),
            ("Xai-Xai", "Patrice Lumumba"),
            ("Chimoio", "Bairro 5"),
            ("Benguela", "Lobito"),
        ],
        "streets": (
            "Avenida Eduardo Mondlane;Rua da Resistência;Avenida 24 de "
            "Julho;Bairro;Quarteirão;Avenida Julius Nyerere;Rua do Bagamoyo;Avenida Samora "
            "Machel;Rua;Travessa"
        ),
        "phone": "+2588",
    },
    "english": {
        "family": (
            "Smith Johnson Williams Brown Jones Miller Davis Wilson Taylor Anderson Thomas Moore "
            "Martin Thompson White Harris Clark Lewis Robinson Walker Young Allen King Wright Scott "
            "Green Baker Adams"
        ),
        "male": (
            "James Robert John Michael William David Richard Joseph Thomas Charles Christopher Daniel "
            "Matthew Anthony Steven Andrew Joshua Kenneth Edward Benjamin"
        ),
        "female": (
            "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Margaret Nancy "
            "Katherine Rebecca Deborah Victoria Samantha Catherine Christine Margaret"
        ),
        "places": [("Springfield", "North"), ("Riverside", "East"), ("Fairview", "Central")],
        "streets": ("Main Street;Oak Avenue;Church Road;High Street;Park Lane;Mill Road"),
        "phone": "+1555",
    },
}
LOCALE_WEIGHTS = {
    "east_africa": 0.34,
    "west_africa_fr": 0.26,
    "west_africa_en": 0.22,
    "lusophone": 0.13,
    "english": 0.05,
}

VARIANTS = {  # cross-language variants / nicknames used by clerks (a subset of what the matcher knows)
    "joseph": ["Yusuf", "José", "Joe"],
    "john": ["Johnny", "Jean", "Yohana"],
    "mohamed": ["Mohammed", "Muhammad"],
    "mamadou": ["Mohamed"],
    "aminata": ["Amina"],
    "fatoumata": ["Fatou", "Fatima", "Fanta"],
    "aissatou": ["Aicha", "Aissata"],
    "mariam": ["Mariama", "Maryam"],
    "william": ["Bill", "Will"],
    "elizabeth": ["Liz", "Beth"],
    "robert": ["Bob", "Rob"],
    "james": ["Jim", "Jimmy"],
    "francisco": ["Chico"],
    "francis": ["Frank"],
    "peter": ["Pierre", "Petro"],
    "paul": ["Paulo"],
    "abdallah": ["Abdullahi"],
    "ibrahim": ["Ibrahima", "Brahim"],
    "ousmane": ["Usman"],
    "margaret": ["Maggie", "Meg"],
    "kwame": ["Kwamena"],
    "chukwuemeka": ["Emeka"],
    "oluwaseun": ["Seun"],
    "babatunde": ["Tunde"],
    "daniel": ["Dan", "Danny"],
    "samuel": ["Sam", "Sammy"],
    "emmanuel": ["Manu", "Emma"],
    "catherine": ["Kate", "Cathy"],
    "patricia": ["Pat", "Patty"],
    "michael": ["Mike"],
    "richard": ["Rick", "Dick"],
    "antonio": ["Tony"],
    "manuel": ["Manu"],
    "mary": ["Maria", "Marie"],
    "moses": ["Musa"],
    "david": ["Daudi"],
}
SPELLING = [
    ("ou", "w"),
    ("w", "ou"),
    ("ph", "f"),
    ("mm", "m"),
    ("ee", "i"),
    ("y", "i"),
    ("i", "y"),
    ("k", "c"),
    ("c", "k"),
    ("dj", "j"),
    ("j", "dj"),
    ("ss", "s"),
    ("é", "e"),
    ("è", "e"),
    ("ô", "o"),
    ("ï", "i"),
    ("ã", "a"),
    ("á", "a"),
    ("ç", "c"),
    ("oo", "u"),
    ("u", "ou"),
    ("a", "ah"),
]
TWIN_PAIRS = {  # traditional twin names
    "male": [
        ("Hassan", "Hussein"),
        ("Assane", "Ousseynou"),
        ("Wasswa", "Kato"),
        ("Taiwo", "Kehinde"),
        ("Panyin", "Kakra"),
        ("Peter", "Paul"),
    ],
    "female": [
        ("Hassana", "Husseina"),
        ("Awa", "Adama"),
        ("Babirye", "Nakato"),
        ("Taiwo", "Kehinde"),
        ("Panyin", "Kakra"),
        ("Mary", "Martha"),
    ],
}
FACILITIES = [f"http://facility-{k:02d}.example.org/mrn" for k in range(12)]


@dataclass
class Person:
    pid: str
    locale: str
    gender: str
    given: list[str]
    family: str
    birth: date
    maiden: str | None = None
    suffix: str = ""
    national_id: str | None = None
    phone: str | None = None
    email: str | None = None
    records: int = 1
    home: dict[str, Any] = field(default_factory=dict)


def _pick(rng: random.Random, pool: list[str]) -> str:
    # Zipf-ish: small pools with a heavy head, so namesakes are frequent
    i = min(int(rng.paretovariate(1.05)) - 1, len(pool) - 1)
    return pool[i] if rng.random() < 0.7 else rng.choice(pool)


def _pools(locale: str) -> dict[str, list[str]]:
    spec = LOCALES[locale]
    return {k: spec[k].split() for k in ("family", "male", "female")}


def _phone(rng: random.Random, locale: str) -> str:
    return LOCALES[locale]["phone"] + "".join(rng.choice(string.digits) for _ in range(8))


def _address(rng: random.Random, locale: str) -> dict[str, Any]:
    city, district = rng.choice(LOCALES[locale]["places"])
    street = rng.choice(LOCALES[locale]["streets"].split(";"))
    return {"line": [f"{street} {rng.randint(1, 400)}"], "city": city, "district": district}


def _birth(rng: random.Random, year_lo: int, year_hi: int) -> date:
    start = date(year_lo, 1, 1)
    return start + timedelta(days=rng.randrange((date(year_hi, 12, 31) - start).days))


def _given_names(rng: random.Random, pools: dict[str, list[str]], gender: str) -> list[str]:
    g = [_pick(rng, pools[gender])]
    if rng.random() < 0.35:
        second = _pick(rng, pools[gender])
        if second != g[0]:
            g.append(second)
    return g


def _people(n_people: int, rng: random.Random) -> list[Person]:
    people: list[Person] = []
    h = 0
    while len(people) < n_people:
        h += 1
        hid = f"H{h:06d}"
        locale = rng.choices(list(LOCALE_WEIGHTS), weights=list(LOCALE_WEIGHTS.values()))[0]
        pools = _pools(locale)
        home = _address(rng, locale)
        house_phone = _phone(rng, locale)
        members: list[Person] = []

        def add(p: Person, members: list[Person] = members) -> Person:
            members.append(p)
            return p

        kind = rng.random()
        family = _pick(rng, pools["family"])
        if kind < 0.25:  # living alone
            g = rng.choice(["male", "female"])
            add(Person(f"{hid}.1", locale, g, _given_names(rng, pools, g), family, _birth(rng, 1940, 2004)))
        else:
            father = None
            if kind < 0.85:
                father = add(
                    Person(
                        f"{hid}.1",
                        locale,
                        "male",
                        _given_names(rng, pools, "male"),
                        family,
                        _birth(rng, 1945, 1998),
                    )
                )
            mother_maiden = _pick(rng, pools["family"])
            married = father is not None and rng.random() < 0.5
            mother = add(
                Person(
                    f"{hid}.2",
                    locale,
                    "female",
                    _given_names(rng, pools, "female"),
                    family if married else mother_maiden,
                    _birth(rng, 1950, 2000),
                    maiden=mother_maiden if married else None,
                )
            )
            parent_birth = max(mother.birth, father.birth if father else mother.birth)
            n_kids = rng.choice([1, 1, 2, 2, 2, 3, 3, 4, 5, 6])
            kid_family = family if (father or rng.random() < 0.5) else mother.family
            k = 3
            year = parent_birth.year + rng.randint(17, 30)
            for _ in range(n_kids):
                if year > 2024:
                    break
                b = _birth(rng, year, year)
                twins = rng.random() < 0.04
                for t in range(2 if twins else 1):
                    g = rng.choice(["male", "female"])
                    if twins and t == 1 and rng.random() < 0.5:
                        g = members[-1].gender
                    given = _given_names(rng, pools, g)
                    used = {x for m in members for x in m.given}
                    while used & set(given):  # parents don't give a name twice (first or middle)...
                        given = _given_names(rng, pools, g)
                    if twins and t == 1 and g == members[-1].gender and rng.random() < 0.5:
                        a_, b_ = rng.choice(TWIN_PAIRS[g])
                        members[-1].given[0], given = a_, [b_]
                    suffix = ""
                    if father and g == "male" and not twins and rng.random() < 0.12:
                        given = list(father.given)  # ...except for a son named after his father
                        suffix = "Jr"
                        father.suffix = "Sr"
                    fam = kid_family if rng.random() < 0.85 else _pick(rng, pools["family"])
                    add(Person(f"{hid}.{k}", locale, g, given, fam, b, suffix=suffix))
                    k += 1
                year += rng.randint(1, 5)
        for p in members:
            p.home = home
            adult = p.birth.year <= 2006
            p.phone = house_phone if (rng.random() < 0.6 or not adult) else _phone(rng, locale)
            if adult and rng.random() < 0.35:
                p.national_id = "".join(rng.choice(string.digits) for _ in range(9))
            if adult and rng.random() < 0.08:
                p.email = f"{p.given[0].lower()}.{p.family.lower()}{rng.randint(1, 99)}@mail.example"
            p.records = rng.choices([1, 2, 3, 4, 5, 6], weights=[30, 30, 20, 11, 6, 3])[0]
        people.extend(members)
    return people[:n_people]


# ---- corruption --------------------------------------------------------------------------------------
def _typo(rng: random.Random, s: str) -> str:
    if len(s) < 3:
        return s
    i = rng.randrange(1, len(s))
    op = rng.random()
    letters = "aeioubdkmnrst"
    if op < 0.3:
        return s[:i] + rng.choice(letters) + s[i + 1 :]
    if op < 0.5:
        return s[:i] + s[i + 1 :]
    if op < 0.7:
        return s[:i] + rng.choice(letters) + s[i:]
    if i < len(s) - 1:
        return s[:i] + s[i + 1] + s[i] + s[i + 2 :]
    return s + s[-1]


def _spelling(rng: random.Random, s: str) -> str:
    low = s.lower()
    options = [(a, b) for a, b in SPELLING if a in low[1:] or (a in low and a in "éèôïãáç")]
    if not options:
        return _typo(rng, s)
    a, b = rng.choice(options)
    i = low.find(a, 1 if a in low[1:] else 0)
    out = low[:i] + b + low[i + len(a) :]
    return out.capitalize()


def _variant(rng: random.Random, s: str) -> str:
    import unicodedata

    key = "".join(c for c in unicodedata.normalize("NFKD", s.lower()) if not unicodedata.combining(c))
    if key in VARIANTS:
        return rng.choice(VARIANTS[key])
    return _spelling(rng, s)


def _date_str(d: date) -> str:
    return d.isoformat()


def _record_birth(rng: random.Random, b: date) -> str | None:
    r = rng.random()
    if r < 0.03:
        return None
    if r < 0.06 and b.day <= 12 and b.day != b.month:
        return f"{b.year:04d}-{b.day:02d}-{b.month:02d}"  # day-month swap
    if r < 0.13:  # estimated
        y = b.year + rng.choice([0, 0, 0, -1, 1])
        return rng.choice([f"{y:04d}", f"{y:04d}-01-01", f"{y:04d}-06-15", f"{y:04d}-07-01"])
    if r < 0.18:  # one part wrong
        part = rng.choice(["y", "m", "d"])
        if part == "y":
            return f"{b.year + rng.choice([-1, 1]):04d}-{b.month:02d}-{b.day:02d}"
        if part == "m":
            return f"{b.year:04d}-{rng.randint(1, 12):02d}-{b.day:02d}"
        return f"{b.year:04d}-{b.month:02d}-{rng.randint(1, 28):02d}"
    return _date_str(b)


def _records(p: Person, rng: random.Random, counter: list[int]) -> list[dict[str, Any]]:
    out = []
    facilities = rng.sample(FACILITIES, k=min(len(FACILITIES), p.records))
    mrns: dict[str, str] = {}
    for r in range(p.records):
        fac = facilities[r] if rng.random() < 0.75 else rng.choice(facilities[: r + 1])
        if fac not in mrns or rng.random() < 0.6:
            mrns[fac] = f"{rng.randint(1, 999999):06d}"
        given = list(p.given)
        family = p.family
        if p.maiden and rng.random() < 0.35:
            family = p.maiden
        if len(given) > 1:
            x = rng.random()
            if x < 0.25:
                given = given[:1]
            elif x < 0.32:
                given = given[1:] + given[:1]  # middle name used as given
        if rng.random() < 0.08:
            given[0] = _variant(rng, given[0])
        if rng.random() < 0.08:
            given[0] = _typo(rng, given[0])
        if rng.random() < 0.06:
            given[0] = _spelling(rng, given[0])
        if rng.random() < 0.08:
            family = _typo(rng, family)
        if rng.random() < 0.08:
            family = _spelling(rng, family)
        name: dict[str, Any] = {"use": "official", "family": family, "given": given}
        if rng.random() < 0.04:
            name = {"use": "official", "family": given[0], "given": [family, *given[1:]]}  # swapped
        if p.suffix and rng.random() < 0.5:
            name["suffix"] = [p.suffix]
            if rng.random() < 0.5:
                name["family"] = f"{name['family']} {p.suffix}"
        names = [name]
        if p.maiden and family != p.maiden and rng.random() < 0.2:
            names.append({"use": "maiden", "family": p.maiden, "given": given})
        counter[0] += 1
        res: dict[str, Any] = {"resourceType": "Patient", "id": f"r{counter[0]:07d}", "name": names}
        if rng.random() > 0.03:
            res["gender"] = (
                p.gender if rng.random() > 0.005 else ("male" if p.gender == "female" else "female")
            )
        bd = _record_birth(rng, p.birth)
        if bd:
            res["birthDate"] = bd
        ids = [{"system": fac, "value": mrns[fac]}]
        if p.national_id and rng.random() < 0.5:
            v = p.national_id if rng.random() > 0.01 else _typo(rng, p.national_id)
            ids.append({"system": NID, "value": v})
        res["identifier"] = ids
        tel = []
        if p.phone and rng.random() < 0.7:
            ph = p.phone if rng.random() > 0.1 else _phone(rng, p.locale)
            if rng.random() < 0.4:
                ph = "0" + ph[4:]  # national format
            tel.append({"system": "phone", "value": ph})
        if p.email and rng.random() < 0.6:
            tel.append({"system": "email", "value": p.email})
        if tel:
            res["telecom"] = tel
        if rng.random() < 0.8:
            addr = {k: (list(v) if isinstance(v, list) else v) for k, v in p.home.items()}
            if rng.random() < 0.3:
                addr.pop("line")
            elif rng.random() < 0.15:
                addr["line"] = [_typo(rng, addr["line"][0])]
            if rng.random() < 0.1:
                addr.pop("district")
            addr["country"] = {
                "east_africa": "KE",
                "west_africa_fr": "BF",
                "west_africa_en": "GH",
                "lusophone": "MZ",
                "english": "US",
            }[p.locale]
            res["address"] = [addr]
        out.append(res)
    return out


def generate_population(n_people: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``n_people`` people in households, 1–6 records each. Returns (shuffled Patients, truth id->person)."""
    rng = random.Random(seed)
    people = _people(n_people, rng)
    counter = [0]
    patients: list[dict[str, Any]] = []
    truth: dict[str, str] = {}
    for p in people:
        for rec in _records(p, rng, counter):
            patients.append(rec)
            truth[rec["id"]] = p.pid
    rng.shuffle(patients)
    return patients, truth


def household(person_id: str) -> str:
    return person_id.split(".", 1)[0]


if __name__ == "__main__":  # write a population as NDJSON: python -m bench.population N SEED OUT.ndjson
    import json
    import sys

    n, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    pats, tr = generate_population(n, seed)
    with open(out, "w", encoding="utf-8") as fh:
        for p in pats:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    with open(out + ".truth.csv", "w", encoding="utf-8") as fh:
        fh.write("id,person\n")
        fh.writelines(f"{k},{v}\n" for k, v in tr.items())
    print(f"{len(pats)} records of {n} people -> {out}", file=sys.stderr)

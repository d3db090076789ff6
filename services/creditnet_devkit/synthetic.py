"""A deterministic generator of realistic synthetic enterprises and credit records.

Every enterprise is generated on its own from two random streams seeded with
``(seed, home city, index)``: one draws its plan (registration data, size,
risk, the other pilot cities it is active in), the other its records. So the
output never depends on how much was generated before, any enterprise or
slice can be regenerated alone (:func:`enterprise_items`), and
:func:`generate` streams: it holds one enterprise at a time and scales to
millions per city.

Dates are relative to an ``as_of`` date (default :data:`AS_OF`), never to
today, so the same seed gives the same bytes on every machine and day.

Shares the generator aims at (the tests check them on a few thousand
enterprises):

* tax credit grades over tax records: A ~20%, B ~55%, M ~15%, C ~7%, D ~3%
  (M is also what every enterprise gets for the year it was founded in);
* enterprises with utility arrears ~6-7%; with social-insurance or
  housing-fund arrears ~4%;
* enterprises with judicial cases ~8%, listed dishonest debtors ~1.3%,
  administrative penalties ~5%;
* loan records overdue ~5%;
* enterprises active in other pilot cities (branch, warehouse, supplier) ~28%.

In a national network (any set of cities that is not within the pilot's five)
the data is skewed as in life: a city registers `enterprises_per_city` times
its population-tier weight (:func:`tier_weight`: 4 for the municipalities, 2
for provincial capitals and sub-provincial cities, 1 otherwise), and an
enterprise's 1-3 other cities are drawn by the same weights, three times
likelier in its own province. The pilot's data is unchanged by this.

Risks are correlated as in life: the tax grade sets a latent risk tier, and the
tier drives arrears, overdue loans, lawsuits and penalties.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import itertools
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from creditnet import divisions, pilot
from creditnet.domain import Category, City
from creditnet.uscc import District, districts, make_uscc
from creditnet.v2 import common_pb2, records_pb2

__all__ = [
    "AS_OF",
    "DATA_EXCHANGE_SUBJECT",
    "DataProvider",
    "EnterprisePlan",
    "Presence",
    "SyntheticItem",
    "data_provider",
    "enterprise_items",
    "enterprises_in",
    "generate",
    "pick_demo_enterprise",
    "plan_enterprise",
    "provider_id",
    "source_for",
    "tier_weight",
]

AS_OF: Final = dt.date(2026, 10, 31)
# Registration dates are drawn from these years (and at least six months
# before as_of, so every enterprise has some history).
FIRST_FOUNDING_YEAR: Final = 1990
LAST_FOUNDING_YEAR: Final = 2024

SyntheticItem: TypeAlias = records_pb2.EnterpriseProfile | records_pb2.CreditRecord

# The generator's records reach the nodes through one data exchange per city;
# network.py issues the matching provider certificates with this subject.
DATA_EXCHANGE_SUBJECT: Final = "demo-data-exchange"

_STREAM_VERSION = "creditnet-synthetic-v1"


# ---------------------------------------------------------------------------
# reference data

_CITY_SHORT = {
    pilot.SHANGHAI: "上海",
    pilot.NANJING: "南京",
    pilot.HANGZHOU: "杭州",
    pilot.HEFEI: "合肥",
    pilot.JIAXING: "嘉兴",
}
# Court-code province abbreviations used in case numbers, e.g. (2024)皖0104民初123号.
_PROVINCE_ABBR = {"31": "沪", "32": "苏", "33": "浙", "34": "皖"}
# One-character city abbreviations used in penalty decision numbers.
_CITY_ABBR = {
    pilot.SHANGHAI: "沪",
    pilot.NANJING: "宁",
    pilot.HANGZHOU: "杭",
    pilot.HEFEI: "合",
    pilot.JIAXING: "嘉",
}
_CITY_CODE = {
    pilot.SHANGHAI: "SH",
    pilot.NANJING: "NJ",
    pilot.HANGZHOU: "HZ",
    pilot.HEFEI: "HF",
    pilot.JIAXING: "JX",
}


# Other cities (any member a directory admits) get names derived from the
# divisions data and generic organisations; the tables above are the pilot's
# local colour.
def _short(city: City) -> str:
    return _CITY_SHORT.get(city) or city.name_zh.removesuffix("市")


def _province(city: City) -> str:
    name = divisions.lookup(divisions.lookup(city.code).province).name_zh
    for suffix in ("维吾尔自治区", "壮族自治区", "回族自治区", "自治区", "省", "市"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name.removesuffix(suffix)
    return name


def _province_abbr(region: str) -> str:
    return _PROVINCE_ABBR.get(region[:2]) or divisions.lookup(region[:2] + "0000").name_zh[:1]


def _abbr(city: City) -> str:
    return _CITY_ABBR.get(city) or _short(city)[:1]


def _letters(city: City) -> str:
    return _CITY_CODE.get(city) or city.code


def _local_banks(city: City) -> tuple[tuple[str, str], ...]:
    return _LOCAL_BANKS.get(city) or ((f"{_short(city)}农村商业银行", f"RCB{city.code}"),)


_CATEGORY_CODE = {
    Category.UTILITY: "UTL",
    Category.SOCIAL_INSURANCE: "SI",
    Category.HOUSING_FUND: "HPF",
    Category.LOGISTICS: "LOG",
    Category.TAX: "TAX",
    Category.JUDICIAL: "JUD",
    Category.PENALTY: "PEN",
    Category.LOAN: "LOAN",
    Category.IP: "IP",
}

INDUSTRIES: Final = (
    "manufacturing",
    "software",
    "biomedicine",
    "new_energy",
    "semiconductors",
    "logistics",
    "trade",
    "construction",
    "food",
    "textiles",
)
_TECH = frozenset({"software", "biomedicine", "new_energy", "semiconductors"})
_GOODS_MOVERS = frozenset({"trade", "logistics", "manufacturing", "textiles", "new_energy", "food"})

# The name word of each industry with its GB/T 4754-2017 division, which is
# what EnterpriseProfile.industry holds.
_INDUSTRY_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "manufacturing": (
        ("机械制造", "C34 通用设备制造业"),
        ("精密机械", "C34 通用设备制造业"),
        ("智能装备", "C35 专用设备制造业"),
        ("汽车零部件", "C36 汽车制造业"),
        ("电气", "C38 电气机械和器材制造业"),
        ("五金制品", "C33 金属制品业"),
    ),
    "software": (
        ("软件", "I65 软件和信息技术服务业"),
        ("信息技术", "I65 软件和信息技术服务业"),
        ("数据科技", "I65 软件和信息技术服务业"),
        ("智能科技", "I65 软件和信息技术服务业"),
        ("网络科技", "I64 互联网和相关服务"),
    ),
    "biomedicine": (
        ("生物医药科技", "C27 医药制造业"),
        ("医药", "C27 医药制造业"),
        ("医疗器械", "C35 专用设备制造业"),
        ("生物科技", "M73 研究和试验发展"),
    ),
    "new_energy": (
        ("新能源科技", "C38 电气机械和器材制造业"),
        ("光伏科技", "C38 电气机械和器材制造业"),
        ("储能技术", "C38 电气机械和器材制造业"),
        ("动力电池", "C38 电气机械和器材制造业"),
        ("氢能科技", "M75 科技推广和应用服务业"),
    ),
    "semiconductors": (
        ("半导体", "C39 计算机、通信和其他电子设备制造业"),
        ("微电子", "C39 计算机、通信和其他电子设备制造业"),
        ("集成电路", "C39 计算机、通信和其他电子设备制造业"),
        ("光电科技", "C39 计算机、通信和其他电子设备制造业"),
    ),
    "logistics": (
        ("物流", "G54 道路运输业"),
        ("供应链管理", "G58 多式联运和运输代理业"),
        ("仓储服务", "G59 装卸搬运和仓储业"),
        ("国际货运代理", "G58 多式联运和运输代理业"),
        ("冷链物流", "G59 装卸搬运和仓储业"),
    ),
    "trade": (
        ("贸易", "F51 批发业"),
        ("进出口", "F51 批发业"),
        ("商贸", "F51 批发业"),
        ("国际贸易", "F51 批发业"),
        ("电子商务", "F52 零售业"),
    ),
    "construction": (
        ("建设工程", "E47 房屋建筑业"),
        ("建筑工程", "E47 房屋建筑业"),
        ("市政工程", "E48 土木工程建筑业"),
        ("装饰工程", "E50 建筑装饰、装修和其他建筑业"),
    ),
    "food": (
        ("食品", "C14 食品制造业"),
        ("粮油", "C13 农副食品加工业"),
        ("农业发展", "A01 农业"),
        ("餐饮管理", "H62 餐饮业"),
    ),
    "textiles": (
        ("纺织", "C17 纺织业"),
        ("家纺", "C17 纺织业"),
        ("服饰", "C18 纺织服装、服饰业"),
        ("皮革制品", "C19 皮革、毛皮、羽毛及其制品和制鞋业"),
        ("化纤", "C28 化学纤维制造业"),
    ),
}

# Each city's industrial profile: Hefei new energy and displays, Hangzhou
# software and e-commerce, Jiaxing textiles, Shanghai trade and biomedicine.
_INDUSTRY_WEIGHTS: dict[City, tuple[int, ...]] = {
    #               manu soft bio  ne  semi logi trade cons food text
    pilot.SHANGHAI: (14, 14, 14, 6, 8, 10, 20, 6, 4, 4),
    pilot.NANJING: (18, 18, 10, 8, 8, 9, 14, 8, 4, 3),
    pilot.HANGZHOU: (14, 26, 10, 6, 5, 8, 16, 4, 3, 8),
    pilot.HEFEI: (18, 12, 8, 18, 14, 8, 10, 8, 4, 0),
    pilot.JIAXING: (22, 6, 4, 10, 0, 10, 12, 6, 8, 22),
}
_DEFAULT_INDUSTRY_WEIGHTS = (16, 12, 8, 8, 5, 10, 14, 8, 8, 8)

# Monthly electricity bill per employee (CNY), yearly tax per employee (CNY)
# and employees per million CNY of capital, relative.
_ELECTRICITY_PER_HEAD = {
    "manufacturing": 1500,
    "software": 120,
    "biomedicine": 900,
    "new_energy": 2500,
    "semiconductors": 4000,
    "logistics": 400,
    "trade": 150,
    "construction": 250,
    "food": 1000,
    "textiles": 1200,
}
_TAX_PER_HEAD = {
    "manufacturing": 25_000,
    "software": 40_000,
    "biomedicine": 50_000,
    "new_energy": 45_000,
    "semiconductors": 60_000,
    "logistics": 15_000,
    "trade": 30_000,
    "construction": 20_000,
    "food": 15_000,
    "textiles": 15_000,
}
_STAFFING = {
    "manufacturing": 1.5,
    "software": 1.2,
    "biomedicine": 1.0,
    "new_energy": 1.2,
    "semiconductors": 1.1,
    "logistics": 1.0,
    "trade": 0.5,
    "construction": 1.3,
    "food": 1.2,
    "textiles": 2.0,
}
_GAS_USERS = frozenset({"manufacturing", "food", "biomedicine", "textiles"})

# Monthly social-insurance contribution base (CNY) most employers declare.
_WAGE_BASE = {
    pilot.SHANGHAI: 9000,
    pilot.NANJING: 7500,
    pilot.HANGZHOU: 7500,
    pilot.HEFEI: 6000,
    pilot.JIAXING: 6500,
}
_DEFAULT_WAGE_BASE = 6000
_SOCIAL_INSURANCE_RATE = 0.30

_TRADE_NAME_CHARS = (
    "华恒瑞鑫泰宏达盛源德信安博创科智联新宇天海嘉晟锦润立正中光明汇腾远通金翔永丰隆辰云星卓睿启航蓝凯诚和佳伟东方"
    "长江亿万峰昊弘祥裕铭浩晨越澜宸熙拓维康汉杰"
)

_TAX_GRADES = ("A", "B", "M", "C", "D")
_TAX_GRADE_WEIGHTS = (20, 58, 11, 8, 3)
_TAX_GRADE_PROTO = {
    "A": records_pb2.TAX_GRADE_A,
    "B": records_pb2.TAX_GRADE_B,
    "M": records_pb2.TAX_GRADE_M,
    "C": records_pb2.TAX_GRADE_C,
    "D": records_pb2.TAX_GRADE_D,
}

GOOD, WATCH, DISTRESSED = 0, 1, 2
# P(tier) given the base tax grade: (good, watch, distressed).
_TIER_BY_GRADE = {
    "A": (100, 0, 0),
    "B": (85, 15, 0),
    "M": (80, 20, 0),
    "C": (0, 60, 40),
    "D": (0, 0, 100),
}
# Per-tier probabilities (good, watch, distressed), calibrated to the shares
# in the module docstring.
_P_UTILITY_ARREARS = (0.02, 0.15, 0.40)
_P_CONTRIBUTION_ARREARS = (0.01, 0.08, 0.30)
_P_JUDICIAL = (0.045, 0.13, 0.22)
_P_DISHONEST = (0.002, 0.02, 0.15)
_P_PENALTY = (0.035, 0.08, 0.15)
_P_LOAN_OVERDUE = (0.015, 0.13, 0.40)
_P_ELSEWHERE = 0.28

_ROLES = ("branch", "warehouse", "supplier")

_NATIONAL_BANKS = (
    ("中国工商银行", "ICBC"),
    ("中国农业银行", "ABC"),
    ("中国银行", "BOC"),
    ("中国建设银行", "CCB"),
    ("交通银行", "BOCOM"),
    ("招商银行", "CMB"),
    ("兴业银行", "CIB"),
    ("上海浦东发展银行", "SPDB"),
    ("中信银行", "CITIC"),
    ("中国民生银行", "CMBC"),
    ("平安银行", "PAB"),
    ("中国邮政储蓄银行", "PSBC"),
)
_LOCAL_BANKS = {
    pilot.SHANGHAI: (("上海银行", "BOS"), ("上海农村商业银行", "SRCB")),
    pilot.NANJING: (("南京银行", "BONJ"), ("江苏银行", "JSB"), ("紫金农村商业银行", "ZJRCB")),
    pilot.HANGZHOU: (("杭州银行", "HZB"), ("浙商银行", "CZB"), ("杭州联合农村商业银行", "HZURCB")),
    pilot.HEFEI: (("徽商银行", "HSB"), ("合肥科技农村商业银行", "HFRCB")),
    pilot.JIAXING: (("嘉兴银行", "JXB"), ("浙江禾城农村商业银行", "HCRCB")),
}

_ELECTRICITY_SOURCE = {
    pilot.SHANGHAI: "国网上海市电力公司",
    pilot.NANJING: "国网南京供电公司",
    pilot.HANGZHOU: "国网杭州供电公司",
    pilot.HEFEI: "国网合肥供电公司",
    pilot.JIAXING: "国网嘉兴供电公司",
}
_WATER_SOURCE = {
    pilot.SHANGHAI: "上海城投水务（集团）有限公司",
    pilot.NANJING: "南京水务集团有限公司",
    pilot.HANGZHOU: "杭州市水务集团有限公司",
    pilot.HEFEI: "合肥供水集团有限公司",
    pilot.JIAXING: "嘉兴市水务投资集团有限公司",
}
_GAS_SOURCE = {
    pilot.SHANGHAI: "上海燃气有限公司",
    pilot.NANJING: "南京港华燃气有限公司",
    pilot.HANGZHOU: "杭州市燃气集团有限公司",
    pilot.HEFEI: "合肥燃气集团有限公司",
    pilot.JIAXING: "嘉兴市燃气集团股份有限公司",
}
_EXCHANGE_NAME = {
    pilot.SHANGHAI: "上海市公共信用信息服务中心",
    pilot.NANJING: "南京市公共信用信息中心",
    pilot.HANGZHOU: "杭州市公共信用信息平台",
    pilot.HEFEI: "合肥市公共信用信息共享服务中心",
    pilot.JIAXING: "嘉兴市公共信用信息平台",
}

_GOODS = {
    "manufacturing": ("数控机床", "汽车零部件", "液压阀组", "工业机器人", "精密轴承", "电机"),
    "software": ("服务器", "网络设备"),
    "biomedicine": ("原料药", "医疗器械", "药品"),
    "new_energy": ("锂电池电芯", "光伏组件", "储能电池柜", "正极材料"),
    "semiconductors": ("晶圆", "集成电路", "显示面板", "电子元器件"),
    "logistics": ("冷链食品", "日用百货", "家用电器", "电子产品", "钢材"),
    "trade": ("电解铜", "铝锭", "大豆", "棉花", "PTA", "热轧卷板", "天然橡胶"),
    "construction": ("钢筋", "水泥", "建筑型材"),
    "food": ("大米", "食用油", "冷冻食品", "饮料"),
    "textiles": ("涤纶长丝", "棉纱", "坯布", "羊毛衫", "皮革"),
}
_WAREHOUSE_WORDS = ("物流园", "仓储中心", "保税物流中心", "冷链仓储基地", "公路港")

_CAUSES = (
    "买卖合同纠纷",
    "借款合同纠纷",
    "金融借款合同纠纷",
    "劳动争议",
    "建设工程施工合同纠纷",
    "房屋租赁合同纠纷",
    "承揽合同纠纷",
    "服务合同纠纷",
    "运输合同纠纷",
    "侵害商标权纠纷",
)
_DEBT_CAUSES = ("金融借款合同纠纷", "买卖合同纠纷", "借款合同纠纷")

# (department, decision-number abbreviation, violations, (min, max) fine in CNY)
_PENALTIES = (
    (
        "市场监督管理局",
        "市监",
        ("发布虚假广告", "销售不符合安全标准的产品", "未按规定公示年度报告信息"),
        (5_000, 200_000),
    ),
    (
        "生态环境局",
        "环",
        ("超标排放大气污染物", "未依法进行环境影响评价即开工建设", "危险废物未按规定贮存"),
        (20_000, 500_000),
    ),
    (
        "应急管理局",
        "应急",
        ("未按规定对从业人员进行安全生产教育和培训", "未如实记录安全生产教育和培训情况"),
        (10_000, 100_000),
    ),
    ("消防救援支队", "消", ("消防设施、器材未保持完好有效", "占用、堵塞、封闭消防车通道"), (5_000, 50_000)),
    ("税务局稽查局", "税稽", ("未按照规定期限办理纳税申报", "进行虚假纳税申报，少缴税款"), (2_000, 300_000)),
    ("人力资源和社会保障局", "人社", ("未按时足额支付劳动报酬", "未依法为职工参加社会保险"), (5_000, 50_000)),
)

_PATENT_TITLES = {
    "software": (
        "一种基于深度学习的数据处理方法及系统",
        "一种基于知识图谱的风险识别方法",
        "一种分布式任务调度方法及装置",
        "一种基于联邦学习的隐私计算方法",
        "一种日志异常检测方法及电子设备",
    ),
    "biomedicine": (
        "一种抗肿瘤化合物及其制备方法",
        "一种单克隆抗体及其应用",
        "一种缓释制剂及其制备方法",
        "一种核酸检测试剂盒",
        "一种一次性使用输液器",
    ),
    "new_energy": (
        "一种锂离子电池正极材料的制备方法",
        "一种光伏组件清洗装置",
        "一种储能系统热管理装置",
        "一种电池模组",
        "一种氢燃料电池双极板",
    ),
    "semiconductors": (
        "一种半导体封装结构",
        "一种芯片测试装置",
        "一种晶圆清洗设备",
        "一种显示面板驱动电路",
        "一种功率器件及其制造方法",
    ),
    "manufacturing": (
        "一种高精度数控机床夹具",
        "一种自动化装配生产线",
        "一种液压阀组",
        "一种精密减速器",
        "一种焊接机器人",
    ),
    "other": ("一种物流周转箱", "一种智能储物柜", "一种包装盒", "一种展示架", "一种食品保鲜装置"),
}
_DESIGN_TITLES = ("包装盒", "控制面板", "智能终端", "展示柜", "手持检测仪", "储能电源")
# Share of (invention, utility model, design) patents by industry.
_PATENT_MIX = {
    "software": (70, 20, 10),
    "biomedicine": (75, 20, 5),
    "semiconductors": (60, 35, 5),
    "new_energy": (45, 50, 5),
    "manufacturing": (25, 60, 15),
}
_PATENT_KINDS = (
    records_pb2.IP_KIND_INVENTION_PATENT,
    records_pb2.IP_KIND_UTILITY_MODEL_PATENT,
    records_pb2.IP_KIND_DESIGN_PATENT,
)


# ---------------------------------------------------------------------------
# data providers


@dataclass(frozen=True, slots=True)
class DataProvider:
    """The data exchange through which generated records reach a city's node."""

    city: City
    # The provider id in the provider's certificate (pki.Role.provider).
    subject: str
    name: str
    categories: tuple[Category, ...]

    @property
    def provider_id(self) -> str:
        """The provenance a node records for this provider's submissions."""
        return f"provider:{self.subject}"


def data_provider(city: City, category: Category | None = None) -> DataProvider:
    """The provider that delivers `category` records in `city`.

    Each city's public credit information platform collects every category
    from the originating organisations (``CreditRecord.source``) and submits
    them, so the answer depends on the city only.
    """
    del category  # one exchange per city serves every category
    name = _EXCHANGE_NAME.get(city) or f"{_short(city)}市公共信用信息中心"
    return DataProvider(city, DATA_EXCHANGE_SUBJECT, name, tuple(Category))


def provider_id(item: records_pb2.CreditRecord) -> str:
    """The provenance to store a generated record under."""
    category = Category.from_oneof_field(item.WhichOneof("detail") or "utility")
    return data_provider(City.from_proto(item.city), category).provider_id


def source_for(city: City, category: Category, kind: int = 0) -> str:
    """The organisation a generated record of `category` in `city` comes from.

    `kind` is the UtilityKind for utility records (water, electricity, gas).
    """
    c = _short(city)
    match category:
        case Category.UTILITY:
            if kind == records_pb2.UTILITY_KIND_WATER:
                return _WATER_SOURCE.get(city) or f"{_short(city)}市水务集团有限公司"
            if kind == records_pb2.UTILITY_KIND_GAS:
                return _GAS_SOURCE.get(city) or f"{_short(city)}市燃气集团有限公司"
            return _ELECTRICITY_SOURCE.get(city) or f"国网{_short(city)}供电公司"
        case Category.SOCIAL_INSURANCE:
            return f"{c}市社会保险事业管理中心"
        case Category.HOUSING_FUND:
            return "上海市公积金管理中心" if city == pilot.SHANGHAI else f"{c}住房公积金管理中心"
        case Category.LOGISTICS:
            return f"{c}市物流公共信息平台"
        case Category.TAX:
            return f"国家税务总局{c}市税务局"
        case Category.JUDICIAL:
            return "上海市高级人民法院" if city == pilot.SHANGHAI else f"{c}市中级人民法院"
        case Category.PENALTY:
            return data_provider(city).name
        case Category.LOAN:
            return f"中国人民银行征信中心{_province(city)}分中心"
        case Category.IP:
            return "上海市知识产权局" if city == pilot.SHANGHAI else f"{c}市市场监督管理局（知识产权局）"
    raise AssertionError(category)


# ---------------------------------------------------------------------------
# the plan of one enterprise


@dataclass(frozen=True, slots=True)
class Presence:
    """An enterprise's activity in another pilot city."""

    city: City
    # "branch" (office, staff), "warehouse" (goods stored there) or
    # "supplier" (ships goods from there).
    role: str


@dataclass(frozen=True, slots=True)
class EnterprisePlan:
    """What the generator decided about one enterprise before writing its records."""

    index: int
    uscc: str
    name: str
    trade_name: str
    industry: str
    industry_division: str
    home_city: City
    district: District
    registered_capital_fen: int
    founded: dt.date
    employees: int
    tax_grade: str
    tier: int
    presences: tuple[Presence, ...]
    utility_arrears: bool
    contribution_arrears: bool
    judicial: bool
    dishonest_debtor: bool
    penalty: bool

    @property
    def cities(self) -> tuple[City, ...]:
        """The cities whose nodes hold records about this enterprise, home first."""
        return (self.home_city, *(p.city for p in self.presences))

    def profile(self) -> records_pb2.EnterpriseProfile:
        return records_pb2.EnterpriseProfile(
            uscc=self.uscc,
            name=self.name,
            industry=self.industry_division,
            home_city=self.home_city.proto,
            registered_capital_fen=self.registered_capital_fen,
            founded=_date(self.founded),
        )


def _rng(seed: int, city: City, index: int, stream: str) -> random.Random:
    # String seeds are hashed with SHA-512, so streams are stable across
    # processes and Python versions and unrelated for neighbouring indices.
    return random.Random(f"{_STREAM_VERSION}:{seed}:{city.value}:{index}:{stream}")


def _check_as_of(as_of: dt.date) -> dt.date:
    latest = min(dt.date(LAST_FOUNDING_YEAR, 12, 31), as_of - dt.timedelta(days=180))
    if latest.year < FIRST_FOUNDING_YEAR:
        raise ValueError(f"as_of {as_of} is too early: enterprises are founded from {FIRST_FOUNDING_YEAR}")
    return latest


def plan_enterprise(
    seed: int,
    city: City,
    index: int,
    *,
    as_of: dt.date = AS_OF,
    network: Sequence[City] = pilot.CITIES,
) -> EnterprisePlan:
    """The plan of enterprise number `index` registered in `city` (cheap: no records).

    Its activity elsewhere (branches, warehouses, suppliers) is in other
    cities of `network`.
    """
    if index < 0:
        raise ValueError(f"index must be ≥ 0, got {index}")
    latest = _check_as_of(as_of)
    rng = _rng(seed, city, index, "plan")
    industry = rng.choices(INDUSTRIES, weights=_INDUSTRY_WEIGHTS.get(city, _DEFAULT_INDUSTRY_WEIGHTS))[0]
    word, division = rng.choice(_INDUSTRY_WORDS[industry])

    years = range(FIRST_FOUNDING_YEAR, latest.year + 1)
    # Most enterprises are young: registrations grew every year.
    year = rng.choices(years, weights=[1.09 ** (y - FIRST_FOUNDING_YEAR) for y in years])[0]
    first = dt.date(year, 1, 1)
    last = min(dt.date(year, 12, 31), latest)
    founded = first + dt.timedelta(days=rng.randrange((last - first).days + 1))

    capital_cny = min(max(rng.lognormvariate(math.log(3_000_000), 1.4), 100_000), 20_000_000_000)
    step = 10_000 if capital_cny < 1_000_000 else 100_000
    capital_cny = max(step, round(capital_cny / step) * step)
    employees = round(8 * (capital_cny / 1e6) ** 0.6 * rng.lognormvariate(0, 0.5) * _STAFFING[industry])
    employees = min(max(employees, 3), 20_000)

    uscc = make_uscc(rng, city, serial=index, legacy=founded < dt.date(2015, 10, 1))
    district = next(d for d in districts(city) if d.code == uscc[2:8])
    trade_name = "".join(rng.sample(_TRADE_NAME_CHARS, 2))
    name = _company_name(rng, city, trade_name, word, capital_cny)

    grade = rng.choices(_TAX_GRADES, weights=_TAX_GRADE_WEIGHTS)[0]
    tier = rng.choices((GOOD, WATCH, DISTRESSED), weights=_TIER_BY_GRADE[grade])[0]

    presences: tuple[Presence, ...] = ()
    if rng.random() < _P_ELSEWHERE:
        members = _members(tuple(network))
        elsewhere = [c for c in members if c != city]
        count = min(rng.choices((1, 2, 3), weights=(55, 30, 15))[0], len(elsewhere))
        if _is_pilot(members):
            others = rng.sample(elsewhere, count)
        else:
            others = _weighted_sample(rng, city, elsewhere, count)
        role_weights = (20, 50, 30) if industry in ("logistics", "trade") else (55, 25, 20)
        presences = tuple(Presence(c, rng.choices(_ROLES, weights=role_weights)[0]) for c in others)

    return EnterprisePlan(
        index=index,
        uscc=uscc,
        name=name,
        trade_name=trade_name,
        industry=industry,
        industry_division=division,
        home_city=city,
        district=district,
        registered_capital_fen=int(capital_cny) * 100,
        founded=founded,
        employees=employees,
        tax_grade=grade,
        tier=tier,
        presences=presences,
        utility_arrears=rng.random() < _P_UTILITY_ARREARS[tier],
        contribution_arrears=rng.random() < _P_CONTRIBUTION_ARREARS[tier],
        judicial=rng.random() < _P_JUDICIAL[tier],
        dishonest_debtor=rng.random() < _P_DISHONEST[tier],
        penalty=rng.random() < _P_PENALTY[tier],
    )


@functools.cache
def _members(network: tuple[City, ...]) -> tuple[City, ...]:
    return tuple(sorted(set(network)))


def _is_pilot(members: tuple[City, ...]) -> bool:
    # The pilot's data stays as it was generated before national networks.
    return set(members) <= set(pilot.CITIES)


# Sub-provincial cities besides the provincial capitals: big economies of their own.
_SUB_PROVINCIAL = frozenset({"210200", "330200", "350200", "370200", "440300", "320500"})


def tier_weight(city: City) -> int:
    """How much business a city draws, by population tier: 4 for the municipalities, 2 for
    provincial capitals and sub-provincial cities, 1 for the other prefectures."""
    if divisions.lookup(city.code).is_municipality:
        return 4
    if city.code.endswith("0100") or city.code in _SUB_PROVINCIAL:
        return 2
    return 1


def enterprises_in(city: City, enterprises_per_city: int, network: Sequence[City]) -> int:
    """How many enterprises are registered in `city`: `enterprises_per_city` in the pilot, that
    times the city's tier weight in a national network (big cities hold more)."""
    if _is_pilot(_members(tuple(network))):
        return enterprises_per_city
    return enterprises_per_city * tier_weight(city)


def _weighted_sample(rng: random.Random, home: City, others: Sequence[City], count: int) -> list[City]:
    """`count` distinct cities of `others`, big cities and cities of `home`'s province likelier."""
    weights = [tier_weight(c) * (3 if c.code[:2] == home.code[:2] else 1) for c in others]
    chosen: list[City] = []
    while len(chosen) < count:
        pick = rng.choices(others, weights=weights)[0]
        if pick not in chosen:
            chosen.append(pick)
    return chosen


def _company_name(rng: random.Random, city: City, trade_name: str, word: str, capital_cny: float) -> str:
    if capital_cny >= 100_000_000 and rng.random() < 0.15:
        form = "集团有限公司"
    elif capital_cny >= 50_000_000 and rng.random() < 0.35:
        form = "股份有限公司"
    else:
        form = "有限责任公司" if rng.random() < 0.15 else "有限公司"
    place = _short(city)
    style = rng.random()
    if style < 0.70:
        return f"{place}{trade_name}{word}{form}"
    if style < 0.82:
        return f"{trade_name}（{place}）{word}{form}"
    if style < 0.92 and city != pilot.SHANGHAI:
        return f"{_province(city)}{trade_name}{word}{form}"
    return f"{place}市{trade_name}{word}{form}"


# ---------------------------------------------------------------------------
# records


def _date(day: dt.date) -> common_pb2.Date:
    return common_pb2.Date(year=day.year, month=day.month, day=day.day)


def _month_end(year: int, month: int) -> dt.date:
    return dt.date(year, month, calendar.monthrange(year, month)[1])


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    n = year * 12 + (month - 1) + delta
    return n // 12, n % 12 + 1


def _last_complete_month(as_of: dt.date) -> tuple[int, int]:
    if as_of == _month_end(as_of.year, as_of.month):
        return as_of.year, as_of.month
    return _shift_month(as_of.year, as_of.month, -1)


def _short_district(district: District) -> str:
    name = district.name
    for suffix in ("新区", "区", "县"):
        if name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name.removesuffix(suffix)
    return name


class _Writer:
    """Draws the records of one enterprise from its record stream."""

    def __init__(self, plan: EnterprisePlan, rng: random.Random, as_of: dt.date) -> None:
        self.plan = plan
        self.rng = rng
        self.as_of = as_of
        self.last_month = _last_complete_month(as_of)
        self.report_date = _month_end(*self.last_month)
        self.seq: dict[tuple[City, Category], int] = {}

    # -- helpers ---------------------------------------------------------

    def record(self, city: City, category: Category, day: dt.date, source: str) -> records_pb2.CreditRecord:
        key = (city, category)
        n = self.seq.get(key, 0) + 1
        self.seq[key] = n
        return records_pb2.CreditRecord(
            record_id=f"{_letters(city)}-{_CATEGORY_CODE[category]}-{self.plan.uscc}-{n:03d}",
            enterprise_uscc=self.plan.uscc,
            city=city.proto,
            source=source,
            record_date=_date(day),
        )

    def months(self, count: int, every: int = 1, align: int = 1) -> list[tuple[int, int]]:
        """Up to `count` (year, month) period ends, oldest first, every `every` months.

        Period ends fall on months m with m % align == 0, and no period starts
        before the enterprise was founded.
        """
        year, month = self.last_month
        while month % align:
            year, month = _shift_month(year, month, -1)
        out: list[tuple[int, int]] = []
        while len(out) < count:
            start = dt.date(*_shift_month(year, month, -(every - 1)), 1)
            if start <= self.plan.founded:
                break
            out.append((year, month))
            year, month = _shift_month(year, month, -every)
        out.reverse()
        return out

    def lognorm(self, sigma: float) -> float:
        return self.rng.lognormvariate(0, sigma)

    def place(self, city: City) -> District:
        # A city without districts (Dongguan, Zhongshan, Jiayuguan...) registers under its own code.
        regions = [d for d in districts(city) if not d.code.endswith("00")] or list(districts(city))
        if city == self.plan.home_city and not self.plan.district.code.endswith("00"):
            return self.plan.district
        return self.rng.choice(regions)

    def lender(self, city: City) -> tuple[str, str]:
        rng = self.rng
        if rng.random() < 0.35:
            bank, code = rng.choice(_local_banks(city))
            return f"{bank}{_short_district(self.place(city))}支行", code
        bank, code = rng.choice(_NATIONAL_BANKS)
        return f"{bank}{_short(city)}{'市' if city == pilot.SHANGHAI else ''}分行", code

    def recent_day(self, days_back: int) -> dt.date:
        earliest = max(self.plan.founded + dt.timedelta(days=30), self.as_of - dt.timedelta(days=days_back))
        return earliest + dt.timedelta(days=self.rng.randrange(max((self.as_of - earliest).days, 0) + 1))

    # -- categories ------------------------------------------------------

    def utility(
        self,
        city: City,
        kind: int,
        monthly_fen: float,
        periods: list[tuple[int, int]],
        every: int,
        arrears: bool,
    ) -> Iterator[records_pb2.CreditRecord]:
        rng = self.rng
        account = f"{rng.randrange(10**9, 10**10)}"
        run_start = run_len = -1
        if arrears and periods:
            run_start = rng.randrange(len(periods))
            run_len = rng.randint(1, 3) if self.plan.tier < DISTRESSED else len(periods)
        owed = months_behind = 0
        source = source_for(city, Category.UTILITY, kind)
        for i, (year, month) in enumerate(periods):
            start = dt.date(*_shift_month(year, month, -(every - 1)), 1)
            end = _month_end(year, month)
            summer_winter = 1.15 if month in (1, 2, 7, 8, 12) else 1.0
            due = max(1_000, int(monthly_fen * every * summer_winter * self.lognorm(0.12)))
            if run_start <= i < run_start + run_len:
                unpaid = int(due * rng.uniform(0.4, 1.0))
                paid = due - unpaid
                owed += unpaid
                months_behind += every
            else:
                paid, owed, months_behind = due + owed, 0, 0
            rec = self.record(city, Category.UTILITY, end, source)
            rec.utility.kind = kind  # type: ignore[assignment]
            rec.utility.account_id = account
            rec.utility.period_start.CopyFrom(_date(start))
            rec.utility.period_end.CopyFrom(_date(end))
            rec.utility.amount_due_fen = due
            rec.utility.amount_paid_fen = paid
            rec.utility.arrears_months = months_behind
            rec.utility.arrears_fen = owed
            yield rec

    def contributions(
        self,
        city: City,
        category: Category,
        headcount: int,
        periods: list[tuple[int, int]],
        per_head_fen: float,
        arrears: bool,
    ) -> Iterator[records_pb2.CreditRecord]:
        rng = self.rng
        run_start = run_len = -1
        if arrears and periods:
            run_start = rng.randrange(len(periods))
            run_len = rng.randint(1, 2) if self.plan.tier < DISTRESSED else len(periods)
        source = source_for(city, category)
        behind = 0
        for i, (year, month) in enumerate(periods):
            headcount = max(1, round(headcount * rng.uniform(0.96, 1.05)))
            monthly = int(headcount * per_head_fen)
            behind = min(behind + rng.randint(1, 3), 12) if run_start <= i < run_start + run_len else 0
            rec = self.record(city, category, _month_end(year, month), source)
            if category is Category.SOCIAL_INSURANCE:
                d = rec.social_insurance
                d.insured_headcount = headcount
            else:
                d = rec.housing_fund  # type: ignore[assignment]
                d.contributor_headcount = headcount  # type: ignore[attr-defined]
            d.period.CopyFrom(_date(dt.date(year, month, 1)))
            d.contribution_fen = monthly
            d.arrears_months = behind
            d.arrears_fen = monthly * behind
            yield rec

    def tax(self) -> Iterator[records_pb2.CreditRecord]:
        plan, rng = self.plan, self.rng
        # A tax year's credit grade is published in April of the next year.
        last_year = (
            self.as_of.year - 1 if self.as_of >= dt.date(self.as_of.year, 4, 30) else self.as_of.year - 2
        )
        years = [y for y in range(last_year - 2, last_year + 1) if y >= plan.founded.year]
        source = source_for(plan.home_city, Category.TAX)
        yearly = plan.employees * _TAX_PER_HEAD[plan.industry] * self.lognorm(0.4)
        for year in years:
            age = year - plan.founded.year
            grade = "M" if age == 0 else plan.tax_grade
            if age > 0 and rng.random() < 0.08:
                # Grades move a step now and then; M (new or inactive) turns B.
                grade = {"A": "B", "B": "A", "M": "B", "C": "B", "D": "C"}[grade]
            paid = int(yearly * 100 * min(1.0, (age + 1) / 3) * self.lognorm(0.15))
            arrears = int(paid * rng.uniform(0.05, 0.4)) if grade in ("C", "D") and rng.random() < 0.6 else 0
            rec = self.record(plan.home_city, Category.TAX, dt.date(year + 1, 4, 30), source)
            rec.tax.year = year
            rec.tax.grade = _TAX_GRADE_PROTO[grade]
            rec.tax.tax_paid_fen = paid
            rec.tax.arrears_fen = arrears
            yield rec

    def logistics(
        self, city: City, count: int, kinds: tuple[int, int, int]
    ) -> Iterator[records_pb2.CreditRecord]:
        plan, rng = self.plan, self.rng
        source = source_for(city, Category.LOGISTICS)
        goods = _GOODS[plan.industry]
        for _ in range(count):
            kind = rng.choices(
                (
                    records_pb2.LOGISTICS_KIND_WAREHOUSE_RECEIPT,
                    records_pb2.LOGISTICS_KIND_SHIPMENT,
                    records_pb2.LOGISTICS_KIND_PLEDGE,
                ),
                weights=kinds,
            )[0]
            day = self.recent_day(540)
            district = self.place(city)
            warehouse = (
                f"{_short(city)}{_short_district(district)}{rng.choice(_WAREHOUSE_WORDS)}"
                f"{rng.randint(1, 12)}号库"
            )
            pledged = kind == records_pb2.LOGISTICS_KIND_PLEDGE or (
                kind == records_pb2.LOGISTICS_KIND_WAREHOUSE_RECEIPT and rng.random() < 0.2
            )
            prefix = {1: "CD", 2: "YD", 3: "ZY"}[kind]
            rec = self.record(city, Category.LOGISTICS, day, source)
            d = rec.logistics
            d.kind = kind
            d.reference = f"{prefix}{day:%Y%m%d}{_letters(city)}{rng.randrange(10**6):06d}"
            d.warehouse = warehouse
            d.goods = rng.choice(goods)
            d.value_fen = int(max(20_000, plan.employees * 20_000 * self.lognorm(0.8)) * 100)
            d.pledged = pledged
            if pledged:
                d.pledgee = self.lender(city)[0]
            yield rec

    def judicial(self) -> Iterator[records_pb2.CreditRecord]:
        plan, rng = self.plan, self.rng
        city = plan.home_city
        source = source_for(city, Category.JUDICIAL)
        cases: list[tuple[int, bool]] = []
        if plan.judicial:
            roles = (40, 50, 10) if plan.tier == GOOD else (20, 75, 5)
            for _ in range(rng.choices((1, 2), weights=(75, 25))[0]):
                cases.append((rng.choices((1, 2, 3), weights=roles)[0], False))
        if plan.dishonest_debtor:
            cases.append((records_pb2.JUDICIAL_ROLE_DEFENDANT, True))
        for role, dishonest in cases:
            day = self.recent_day(1000)
            district = self.place(city)
            court = (
                f"{_short(city)}市{district.name}人民法院"
                if district.name.endswith("区")
                else f"{district.name}人民法院"
            )
            if dishonest:
                kind, status, cause = "执", records_pb2.CASE_STATUS_ENFORCEMENT, rng.choice(_DEBT_CAUSES)
            else:
                cause = rng.choice(_CAUSES)
                old = (self.as_of - day).days > 365
                if role == records_pb2.JUDICIAL_ROLE_DEFENDANT and old and rng.random() < 0.3:
                    kind, status = "执", records_pb2.CASE_STATUS_ENFORCEMENT
                else:
                    kind = "民初"
                    closed = rng.random() < (0.8 if old else 0.4)
                    status = records_pb2.CASE_STATUS_CLOSED if closed else records_pb2.CASE_STATUS_OPEN
            number = (
                f"（{day.year}）{_province_abbr(district.code)}{district.code[2:6]}{kind}"
                f"{rng.randint(100, 29_999)}号"
            )
            rec = self.record(city, Category.JUDICIAL, day, source)
            d = rec.judicial
            d.case_number = number
            d.court = court
            d.role = role  # type: ignore[assignment]
            d.cause = cause
            d.amount_fen = int(max(5_000, plan.employees * 8_000 * self.lognorm(1.0)) * 100)
            d.status = status
            d.dishonest_debtor = dishonest
            yield rec

    def penalties(self) -> Iterator[records_pb2.CreditRecord]:
        plan, rng = self.plan, self.rng
        city = plan.home_city
        c = _short(city)
        for _ in range(rng.choices((1, 2), weights=(80, 20))[0]):
            dept, abbr, violations, (low, high) = rng.choice(_PENALTIES)
            if dept == "消防救援支队":
                authority = f"{c}市消防救援支队" if city != pilot.SHANGHAI else "上海市消防救援总队"
            elif dept == "税务局稽查局":
                authority = f"国家税务总局{c}市税务局稽查局"
            else:
                authority = f"{c}市{dept}"
            day = self.recent_day(1000)
            fine = round(math.exp(rng.uniform(math.log(low), math.log(high))), -2)
            rec = self.record(city, Category.PENALTY, day, source_for(city, Category.PENALTY))
            d = rec.penalty
            d.decision_number = f"{_abbr(city)}{abbr}罚〔{day.year}〕{rng.randint(1, 3000)}号"
            d.authority = authority
            d.violation = rng.choice(violations)
            d.fine_fen = int(fine) * 100
            d.serious = rng.random() < (0.10, 0.25, 0.45)[plan.tier]
            yield rec

    def loans(self, city: City, count: int) -> Iterator[records_pb2.CreditRecord]:
        plan, rng = self.plan, self.rng
        capital_cny = plan.registered_capital_fen / 100
        for _ in range(count):
            lender, code = self.lender(city)
            start = self.recent_day(4 * 365)
            term = rng.choice((12, 24, 36))
            maturity_y, maturity_m = _shift_month(start.year, start.month, term)
            maturity = dt.date(maturity_y, maturity_m, min(start.day, 28))
            principal_cny = max(200_000, round(capital_cny * rng.uniform(0.05, 0.6), -4))
            principal = int(principal_cny) * 100
            overdue = rng.random() < _P_LOAN_OVERDUE[plan.tier]
            record_day = self.report_date
            days = 0
            if overdue and plan.tier == DISTRESSED and rng.random() < 0.2:
                status, days = records_pb2.LOAN_STATUS_WRITTEN_OFF, rng.randint(181, 720)
                balance = int(principal * rng.uniform(0.3, 1.0))
            elif overdue:
                status = records_pb2.LOAN_STATUS_OVERDUE
                days = rng.randint(1, 90) if plan.tier < DISTRESSED else rng.randint(30, 360)
                balance = int(principal * rng.uniform(0.2, 1.0))
            elif maturity <= self.report_date:
                status, balance, record_day = records_pb2.LOAN_STATUS_SETTLED, 0, maturity
            else:
                status = records_pb2.LOAN_STATUS_CURRENT
                remaining = (maturity - self.report_date).days / max((maturity - start).days, 1)
                balance = int(principal * min(1.0, remaining))
            if record_day < start:
                record_day = start
            rec = self.record(city, Category.LOAN, record_day, lender)
            d = rec.loan
            d.lender = lender
            d.contract_id = f"{code}{start.year}{_letters(city)}{rng.randrange(10**8):08d}"
            d.principal_fen = principal
            d.balance_fen = balance
            d.status = status
            d.days_overdue = days
            d.maturity.CopyFrom(_date(maturity))
            yield rec

    def ip(self) -> Iterator[records_pb2.CreditRecord]:
        plan, rng = self.plan, self.rng
        city = plan.home_city
        source = source_for(city, Category.IP)
        industry = plan.industry
        if industry in _TECH:
            n_patents = rng.choices((0, 1, 2, 3, 4, 5), weights=(15, 25, 20, 15, 15, 10))[0]
        elif industry == "manufacturing":
            n_patents = rng.choices((0, 1, 2, 3), weights=(50, 25, 15, 10))[0]
        else:
            n_patents = 1 if rng.random() < 0.1 else 0
        titles = _PATENT_TITLES.get(industry, _PATENT_TITLES["other"])
        mix = _PATENT_MIX.get(industry, (10, 50, 40))
        granted: list[str] = []
        for _ in range(n_patents):
            kind = rng.choices(_PATENT_KINDS, weights=mix)[0]
            day = self.recent_day(6 * 365)
            filed = max(
                plan.founded.year, day.year - (2 if kind == records_pb2.IP_KIND_INVENTION_PATENT else 1)
            )
            type_digit = {1: "1", 2: "2", 3: "3"}[kind]
            title = (
                rng.choice(_DESIGN_TITLES)
                if kind == records_pb2.IP_KIND_DESIGN_PATENT
                else rng.choice(titles)
            )
            rec = self.record(city, Category.IP, day, source)
            rec.ip.kind = kind
            rec.ip.registration_number = "ZL" + _patent_application(filed, type_digit, rng.randrange(10**7))
            rec.ip.title = title
            granted.append(title)
            yield rec
        if rng.random() < 0.4:
            day = self.recent_day(8 * 365)
            rec = self.record(city, Category.IP, day, source)
            rec.ip.kind = records_pb2.IP_KIND_TRADEMARK
            rec.ip.registration_number = f"{rng.randrange(10**7, 8 * 10**7)}"
            rec.ip.title = f"{plan.trade_name}（第{rng.choice((7, 9, 35, 42, 5, 29, 25))}类）"
            yield rec
        if granted and rng.random() < 0.15:
            day = self.recent_day(3 * 365)
            amount_cny = max(500_000, round(plan.registered_capital_fen / 100 * rng.uniform(0.05, 0.3), -4))
            rec = self.record(city, Category.IP, day, source)
            rec.ip.kind = records_pb2.IP_KIND_IP_PLEDGE
            rec.ip.registration_number = f"Y{day.year}98{rng.randrange(10**7):07d}"
            rec.ip.title = (
                f"{granted[0]}等{len(granted)}件专利权质押" if len(granted) > 1 else f"{granted[0]}专利权质押"
            )
            rec.ip.pledge_amount_fen = int(amount_cny) * 100
            rec.ip.pledgee = self.lender(city)[0]
            yield rec

    # -- one enterprise --------------------------------------------------

    def records(self) -> Iterator[records_pb2.CreditRecord]:
        plan, rng = self.plan, self.rng
        home = plan.home_city
        staff = plan.employees
        electricity = max(300, staff * _ELECTRICITY_PER_HEAD[plan.industry]) * 100.0

        # Which utility account falls into arrears, if any.
        troubled = rng.choice(("electricity", "electricity", "water")) if plan.utility_arrears else ""
        yield from self.utility(
            home,
            records_pb2.UTILITY_KIND_ELECTRICITY,
            electricity,
            self.months(rng.randint(5, 9)),
            1,
            troubled == "electricity",
        )
        water_share = 0.2 if plan.industry in ("food", "textiles", "biomedicine") else 0.08
        yield from self.utility(
            home,
            records_pb2.UTILITY_KIND_WATER,
            electricity * water_share,
            self.months(rng.randint(2, 4), every=2, align=2),
            2,
            troubled == "water",
        )
        if plan.industry in _GAS_USERS and rng.random() < 0.5:
            yield from self.utility(
                home,
                records_pb2.UTILITY_KIND_GAS,
                electricity * 0.3,
                self.months(rng.randint(2, 3), every=2, align=2),
                2,
                False,
            )

        wage = _WAGE_BASE.get(home, _DEFAULT_WAGE_BASE)
        insured = max(1, round(staff * rng.uniform(0.85, 1.0)))
        has_fund = rng.random() < (0.55 if staff < 20 else 0.9)
        fund_trouble = plan.contribution_arrears and has_fund and rng.random() < 0.3
        yield from self.contributions(
            home,
            Category.SOCIAL_INSURANCE,
            insured,
            self.months(rng.randint(4, 7), every=3, align=3),
            wage * _SOCIAL_INSURANCE_RATE * 100,
            plan.contribution_arrears and not fund_trouble,
        )
        if has_fund:
            rate = rng.choice((0.05, 0.07, 0.08, 0.10, 0.12))
            yield from self.contributions(
                home,
                Category.HOUSING_FUND,
                max(1, round(insured * rng.uniform(0.6, 1.0))),
                self.months(rng.randint(2, 4), every=6, align=6),
                wage * 2 * rate * 100,
                fund_trouble,
            )

        yield from self.tax()

        if plan.industry in _GOODS_MOVERS:
            p = 0.8 if plan.industry in ("trade", "logistics") else 0.4
            if rng.random() < p:
                yield from self.logistics(home, rng.randint(1, 4), (45, 40, 15))

        if plan.judicial or plan.dishonest_debtor:
            yield from self.judicial()
        if plan.penalty:
            yield from self.penalties()

        yield from self.loans(home, rng.choices((0, 1, 2, 3), weights=(35, 35, 20, 10))[0])
        yield from self.ip()

        for presence in plan.presences:
            yield from self.elsewhere(presence)

    def elsewhere(self, presence: Presence) -> Iterator[records_pb2.CreditRecord]:
        """Records of a branch, warehouse or supplier relationship in another city."""
        plan, rng = self.plan, self.rng
        city = presence.city
        staff = max(3, round(plan.employees * rng.uniform(0.05, 0.2)))
        if presence.role in ("branch", "warehouse"):
            per_head = _ELECTRICITY_PER_HEAD[plan.industry] if presence.role == "branch" else 800
            yield from self.utility(
                city,
                records_pb2.UTILITY_KIND_ELECTRICITY,
                max(300, staff * per_head) * 100.0,
                self.months(rng.randint(3, 5)),
                1,
                False,
            )
        if presence.role == "branch":
            yield from self.contributions(
                city,
                Category.SOCIAL_INSURANCE,
                staff,
                self.months(rng.randint(2, 4), every=3, align=3),
                _WAGE_BASE.get(city, _DEFAULT_WAGE_BASE) * _SOCIAL_INSURANCE_RATE * 100,
                False,
            )
        elif presence.role == "warehouse":
            yield from self.logistics(city, rng.randint(2, 4), (60, 15, 25))
        else:
            yield from self.logistics(city, rng.randint(2, 3), (0, 100, 0))
            if rng.random() < 0.3:
                yield from self.loans(city, 1)


def _patent_application(year: int, type_digit: str, serial: int) -> str:
    """A CN patent application number: year, type, serial, '.', check digit."""
    digits = f"{year}{type_digit}{serial:07d}"
    weights = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
    check = sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    return f"{digits}.{'X' if check == 10 else check}"


# ---------------------------------------------------------------------------
# public entry points


def enterprise_items(
    seed: int, city: City, index: int, *, as_of: dt.date = AS_OF, network: Sequence[City] = pilot.CITIES
) -> Iterator[SyntheticItem]:
    """The profile and then the records of one enterprise, exactly as :func:`generate` yields them."""
    plan = plan_enterprise(seed, city, index, as_of=as_of, network=network)
    yield plan.profile()
    yield from _Writer(plan, _rng(seed, city, index, "records"), as_of).records()


def generate(
    seed: int,
    enterprises_per_city: int,
    cities: Iterable[City] = pilot.CITIES,
    *,
    as_of: dt.date = AS_OF,
) -> Iterator[SyntheticItem]:
    """Stream `enterprises_per_city` enterprises registered in each of `cities`
    (times the city's tier weight in a national network: :func:`enterprises_in`).

    For every enterprise: its EnterpriseProfile (held by the home city's
    node), then its CreditRecords, each with ``city`` set to the node that
    holds it, which for about a quarter of enterprises includes 1-3 other
    cities of the network (in a national network big cities and cities of the
    same province likelier). Enterprises come city by city in index order, so
    the first n of a city are the same whatever `enterprises_per_city` is.
    """
    if enterprises_per_city < 0:
        raise ValueError(f"enterprises_per_city must be ≥ 0, got {enterprises_per_city}")
    _check_as_of(as_of)
    chosen = tuple(cities)
    for city in chosen:
        for index in range(enterprises_in(city, enterprises_per_city, chosen)):
            yield from enterprise_items(seed, city, index, as_of=as_of, network=chosen)


def pick_demo_enterprise(
    seed: int, enterprises_per_city: int, network: Sequence[City] = pilot.CITIES, *, as_of: dt.date = AS_OF
) -> str:
    """The USCC of a generated enterprise with records in at least three cities.

    Prefers one whose activity elsewhere includes utility bills (a branch or
    a warehouse) and that has records in Shanghai, so that every demo query
    finds something. Deterministic for a given seed and size.
    """
    fallback: str | None = None
    network = tuple(sorted(set(network)))
    for index, city in itertools.product(range(enterprises_per_city), network):
        plan = plan_enterprise(seed, city, index, as_of=as_of, network=network)
        if len(plan.cities) < min(3, len(network)):
            continue
        in_shanghai = pilot.SHANGHAI in plan.cities or pilot.SHANGHAI not in network
        if in_shanghai and all(p.role != "supplier" for p in plan.presences):
            return plan.uscc
        fallback = fallback or plan.uscc
    if fallback is None:
        raise ValueError(
            f"none of the {enterprises_per_city} enterprises per city has records in three cities; "
            "generate more enterprises"
        )
    return fallback
